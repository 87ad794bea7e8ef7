"""A unit's parameters in the PNG info ("CapHuman 2: strength 1; ...; pose photo no; photos 1a2b3c4d5e6f")
and back. Keys follow the unit's position (its tab), not the count of enabled units, so a paste lands in the same tab.
`from_infotext` never raises: whatever text it gets, it returns only values `unit_from_dict` accepts."""

from __future__ import annotations

from typing import Any

from preprocessors.head.codes import DEFAULT_MODES
from preprocessors.head.frames import RESIZE_MODES

from .params import (
    FIELD_ORDER,
    RANGES,
    WHOLE_RANGES,
    UnitParams,
    UnitValidationError,
    _face_index,
    _finite,
    check_detail_passes,
    check_model_name,
    check_passes,
    check_whole,
    parse_modes,
)
from .photo_store import is_photos_hash, photos_hash

SAVED = [n for n in FIELD_ORDER if n not in ("enabled", "reference_images", "more_reference_images", "pose_image",
                                             "allow_whole_image")]
PHOTOS = "photos"
NOTE_KEY = "CapHuman note"  # why CapHuman stopped before the end of the job (a refiner of another model family)


def infotext_key(position: int) -> str:
    """The infotext key of the unit in tab `position` (0-based): 'CapHuman 1', 'CapHuman 2', ..."""
    return f"CapHuman {position + 1}"


def to_infotext(unit: UnitParams, photos: str | None = None, pose: str | None = None) -> str:
    """The unit's settings as one infotext value, with the hashes of its reference photos and of its pose photo
    (`photos`/`pose` when the caller has them already, e.g. from PhotoStore.save, else computed)."""
    parts = []
    for name in SAVED:
        value = getattr(unit, name)
        if name == "modes":
            value = "+".join(value or DEFAULT_MODES)
        elif name == "model":
            value = value or "default"
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{name} {value}")
    parts.append(f"pose photo {'no' if unit.pose_image is None else pose or photos_hash([unit.pose_image])}")
    if unit.reference_images:
        parts.append(f"{PHOTOS} {photos or photos_hash(unit.reference_images)}")
    return "; ".join(parts)


def infotext_entries(units: list[UnitParams]) -> dict[str, str]:
    """{key: text} for the enabled units, keyed by their position in `units` (all units, disabled included)."""
    return {infotext_key(position): to_infotext(unit) for position, unit in enumerate(units) if unit.enabled}


def _parse(name: str, value: str) -> Any:
    if name == "modes":
        return list(DEFAULT_MODES) if value == "none" else list(parse_modes(value))  # "none": the defaults acted
    if name == "model":
        return "" if value == "default" else check_model_name(value)
    if name == "resize_mode":
        if value not in RESIZE_MODES:
            raise UnitValidationError(name, "unknown")
        return value
    if name == "face_index":
        return _face_index(value)
    if name == "passes":
        return check_passes(value)
    if name == "detail_passes":
        return check_detail_passes(value)
    if name == "refine":
        if value not in ("True", "False"):
            raise UnitValidationError(name, "unknown")
        return value == "True"
    if name in WHOLE_RANGES:
        return check_whole(value, name)
    number = _finite(value, name)
    low, high = RANGES[name]
    if not low <= number <= high:
        raise UnitValidationError(name, "out of range")
    return number


def _parts(text: Any):
    if not isinstance(text, str):
        return
    for part in text.split(";"):
        name, _, value = part.strip().partition(" ")
        yield name, value.strip()


def from_infotext(text: Any) -> dict:
    """Parsed values (only those present and valid); `enabled` is True. Never raises."""
    values: dict = {"enabled": True}
    for name, value in _parts(text):
        if name not in SAVED or not value:
            continue
        try:
            values[name] = _parse(name, value)
        except (UnitValidationError, ValueError, TypeError, OverflowError):
            continue
    return values


def photos_hash_from_infotext(text: Any) -> str | None:
    """The reference photos' hash written by `to_infotext` (see photo_store), or None."""
    for name, value in _parts(text):
        if name == PHOTOS and is_photos_hash(value):
            return value
    return None


def pose_hash_from_infotext(text: Any) -> str | None:
    """The pose photo's hash written by `to_infotext` (a one-photo set in the store), or None (no pose photo, or
    an infotext from before hashes: 'pose photo yes')."""
    for name, value in _parts(text):
        kind, _, digest = value.partition(" ")
        if name == "pose" and kind == "photo" and is_photos_hash(digest):
            return digest
    return None
