"""`POST /caphuman/v1/score`, both ends, without webui imports (the route itself is wired by the script).

Request:  {"image": "<base64 PNG/JPEG>", "units": [<unit object as in alwayson_scripts>, ...], "overlay": false}
          ("unit": {...} is accepted for one unit; a unit without "enabled" counts as enabled)
Response: {"width": W, "height": H, "units": [<FaceScore.to_dict()>, ...],
           "infotext": {"CapHuman score 1": "id 0.843, shape 0.113, ..."}, "overlay": "<base64 PNG>" | null}
A wrong field raises `UnitValidationError` whose `field` locates it ("image", "units[1].strength"): answer 422.
"""

from __future__ import annotations

import base64
import io

from PIL import Image

from caphuman_ext.unit.params import UnitValidationError, decode_image, unit_from_dict

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
    image = decode_image(payload["image"], "image")
    parsed = []
    for index, unit in enumerate(units):
        try:
            parsed.append(unit_from_dict({"enabled": True, **unit} if isinstance(unit, dict) else unit))
        except UnitValidationError as error:
            raise UnitValidationError(f"units[{index}].{error.field}", error.reason) from error
    overlay = payload.get("overlay", False)
    if not isinstance(overlay, bool):
        raise UnitValidationError("overlay", "expected true or false")
    return image, parsed, overlay


def score_request(payload: dict, scorer: Scorer) -> dict:
    """Answer one score request with `scorer` (share the webui's `UnitBuilder` through `Scorer(builder=...)`)."""
    image, units, overlay = parse_request(payload)
    result = scorer.score(image, units, overlay=overlay)
    answer = result.to_dict()
    answer["infotext"] = result.infotext()
    answer["overlay"] = encode_png(result.overlay) if result.overlay is not None else None
    return answer
