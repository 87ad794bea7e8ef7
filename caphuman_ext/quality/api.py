"""`POST /caphuman/v1/score`, both ends, without webui imports (the route itself is wired by the script).

Request:  {"image": "<base64 PNG/JPEG>", "units": [<unit object as in alwayson_scripts>, ...], "overlay": false}
          ("unit": {...} is accepted for one unit; a unit without "enabled" counts as enabled)
Response: {"width": W, "height": H, "units": [<FaceScore.to_dict()>, ...],
           "infotext": {"CapHuman score 1": "id 0.843, shape 0.113, ..."}, "overlay": "<base64 PNG>" | null}
A wrong field raises `UnitValidationError` whose `field` locates it ("image", "units[1].strength"): answer 422.
Bounded as generation requests are: every field and photo header is checked before any pixel is decoded, and the
photos of all units plus the image count against `params.check_request_work` (UnitTooLargeError "units": 413).
"""

from __future__ import annotations

import base64
import io

from PIL import Image

from caphuman_ext.unit.params import (
    UnitParams,
    UnitTooLargeError,
    UnitValidationError,
    check_request_work,
    check_unit,
    decode_image,
    unit_from_dict,
)

from .scorer import Scorer

MAX_UNITS = 8


def encode_png(image: Image.Image) -> str:
    """Base64 of `image` as PNG (what the webui API returns)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def score_payload(image: Image.Image, units: list[dict], overlay: bool = False) -> dict:
    """The request body for one image and its unit objects (images inside them already base64)."""
    return {"image": encode_png(image), "units": units, "overlay": overlay}


def parse_request(payload: dict) -> tuple[Image.Image, list, bool]:
    """(image, validated units, overlay) from a request body; UnitValidationError names the wrong field."""
    if not isinstance(payload, dict):
        raise UnitValidationError("body", f"expected a JSON object, got {type(payload).__name__}")
    unknown = sorted(set(payload) - {"image", "units", "unit", "overlay"})
    if unknown:
        raise UnitValidationError(unknown[0], "unknown field (known: image, units, unit, overlay)")
    if not payload.get("image"):
        raise UnitValidationError("image", "the generated image (base64) is required")
    units = payload.get("units", [payload["unit"]] if "unit" in payload else None)
    if not isinstance(units, list) or not units:
        raise UnitValidationError("units", "a non-empty list of unit objects is required")
    if len(units) > MAX_UNITS:
        raise UnitValidationError("units", f"at most {MAX_UNITS} units")
    header = decode_image(payload["image"], "image", decode=False)  # every field and header first: no pixel
    checked = _units(units, check_unit)  # is decoded for a request refused
    try:
        check_request_work([*checked, UnitParams(reference_images=[header])])
    except UnitTooLargeError as error:
        raise UnitTooLargeError("units", error.reason) from error
    image = decode_image(payload["image"], "image")
    parsed = _units(units, unit_from_dict)
    overlay = payload.get("overlay", False)
    if not isinstance(overlay, bool):
        raise UnitValidationError("overlay", "expected true or false")
    return image, parsed, overlay


def _units(units: list, read) -> list:
    """Each unit object through `read` (`check_unit` or `unit_from_dict`), errors located as units[i].field."""
    parsed = []
    for index, unit in enumerate(units):
        try:
            parsed.append(read({"enabled": True, **unit} if isinstance(unit, dict) else unit))
        except UnitValidationError as error:
            raise type(error)(f"units[{index}].{error.field}", error.reason) from error
    return parsed


def score_request(payload: dict, scorer: Scorer) -> dict:
    """Answer one score request with `scorer` (share the webui's `UnitBuilder` through `Scorer(builder=...)`)."""
    image, units, overlay = parse_request(payload)
    with scorer.transient():  # nothing of one request is kept: memory back to where it was
        result = scorer.score(image, units, overlay=overlay)
    answer = result.to_dict()
    answer["infotext"] = result.infotext()
    answer["overlay"] = encode_png(result.overlay) if result.overlay is not None else None
    return answer
