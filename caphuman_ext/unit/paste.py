"""What a paste of an image's parameters ("CapHuman 2: ...") does to one unit's tab.

The infotext carries settings and photo hashes, not photos. A unit is enabled by a paste only when its reference
photos come back from the local photo store; otherwise its settings are pasted, it stays as it was, and the message
says what is left to do — never an enabled unit without photos.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from ..lifecycle.detail import DETAIL_KEY, parse_details
from .infotext import from_infotext, infotext_key, photos_hash_from_infotext, pose_hash_from_infotext
from .photo_store import PhotoStore


@dataclass
class PastedUnit:
    """None in a field: leave that component as it is."""

    settings: dict = field(default_factory=dict)
    enabled: bool | None = None
    reference: Image.Image | None = None
    more: list[str] | None = None  # file paths for the "more photos" component
    pose: Image.Image | None = None
    message: str | None = None


def pasted_unit(params: dict, position: int, store: PhotoStore | None) -> PastedUnit | None:
    """The paste of unit `position` from a parsed infotext `params`, or None when it has no entry."""
    key = infotext_key(position)
    if key not in params:
        return None
    text = params[key]
    settings = {k: v for k, v in from_infotext(text).items() if k != "enabled"}
    if "detail_passes" in settings:  # what the unit did in detail passes (none: off), so a paste redoes the picture
        settings["detail_passes"] = parse_details(params.get(DETAIL_KEY)).get(position, "off")
    digest, pose_digest = photos_hash_from_infotext(text), pose_hash_from_infotext(text)
    photos = store.lookup(digest) if store is not None and digest else None
    paths = store.paths(digest) if photos else None
    pose = store.lookup(pose_digest) if store is not None and pose_digest else None
    if not photos:
        return PastedUnit(settings, message=f"Pasted the settings of CapHuman unit {position + 1}; its photos are "
                          "not on this computer: add the person's photo and tick **Enable**.")
    return PastedUnit(settings, enabled=True, reference=photos[0], more=[str(p) for p in paths[1:]] or None,
                      pose=pose[0] if pose else None,
                      message=f"Pasted CapHuman unit {position + 1} with its photos from the local photo store.")
