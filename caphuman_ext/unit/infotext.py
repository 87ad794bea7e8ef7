"""A unit's parameters in the PNG info ("CapHuman 1: strength 1.0; modes position+pose; ...") and back."""

from __future__ import annotations

from .params import FIELD_ORDER, UnitParams

SAVED = [n for n in FIELD_ORDER if n not in ("enabled", "reference_images", "more_reference_images", "pose_image",
                                             "allow_whole_image")]


def infotext_key(index: int) -> str:
    return f"CapHuman {index + 1}"


def to_infotext(unit: UnitParams) -> str:
    parts = []
    for name in SAVED:
        value = getattr(unit, name)
        if name == "modes":
            value = "+".join(value) or "none"
        elif name == "model":
            value = value or "default"
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{name} {value}")
    parts.append(f"pose photo {'yes' if unit.pose_image is not None else 'no'}")
    return "; ".join(parts)


def from_infotext(text: str) -> dict:
    """Parsed values (only those present and readable); `enabled` is True."""
    values: dict = {"enabled": True}
    for part in text.split(";"):
        name, _, value = part.strip().partition(" ")
        if name not in SAVED or not value:
            continue
        if name == "modes":
            values[name] = [] if value == "none" else value.split("+")
        elif name == "model":
            values[name] = "" if value == "default" else value
        elif name == "resize_mode":
            values[name] = value
        elif name == "face_index":
            values[name] = int(float(value))
        else:
            try:
                values[name] = float(value)
            except ValueError:
                continue
    return values
