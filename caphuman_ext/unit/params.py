"""One CapHuman unit's parameters: defaults, the order the UI passes them in, and validation with field names."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field, fields
from typing import Any

from preprocessors.head.codes import MODES
from preprocessors.head.frames import RESIZE_MODES


class UnitValidationError(ValueError):
    """A unit parameter is wrong; `field` names it (API answers 422 with it)."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass
class UnitParams:
    enabled: bool = False
    model: str = ""
    reference_images: list = field(default_factory=list)  # PIL images, numpy arrays or base64 strings
    face_index: int = 0
    allow_whole_image: bool = False
    pose_image: Any = None
    modes: tuple[str, ...] = ("position", "pose")
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    pose_only: float = 0.0  # fraction of sampling with the identity context off (the reference's tau)
    resize_mode: str = "Crop and Resize"
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    center_x: float = 0.5
    center_y: float = 0.45
    scale: float = 0.45
    expression: float = 1.0
    jaw_open: float = 0.0
    light_yaw: float = 0.0
    light_pitch: float = 0.0
    light_strength: float = 0.0  # 0: the photo's own light
    more_reference_images: list = field(default_factory=list)  # the UI's extra photos of the same person


FIELD_ORDER = [f.name for f in fields(UnitParams)]
_RANGES = {"strength": (0.0, 2.0), "start": (0.0, 1.0), "end": (0.0, 1.0), "pose_only": (0.0, 1.0),
           "yaw": (-90.0, 90.0), "pitch": (-60.0, 60.0), "roll": (-60.0, 60.0), "center_x": (0.0, 1.0),
           "center_y": (0.0, 1.0), "scale": (0.05, 1.5), "expression": (0.0, 2.0), "jaw_open": (-0.2, 0.6),
           "light_yaw": (-180.0, 180.0), "light_pitch": (-90.0, 90.0), "light_strength": (0.0, 3.0)}


def decode_image(value: Any, field_name: str):
    """PIL image from a PIL/numpy image, a base64 string (optionally a data URL) or a gradio image dict."""
    from PIL import Image

    if value is None or isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):  # gradio image editor / file objects
        value = value.get("image") or value.get("composite") or value.get("background") or value.get("name")
        return decode_image(value, field_name)
    if hasattr(value, "name") and not isinstance(value, str):  # an uploaded file (gradio File)
        try:
            return Image.open(value.name).copy()
        except Exception as error:  # noqa: BLE001
            raise UnitValidationError(field_name, f"{value.name} is not an image") from error
    if hasattr(value, "shape"):
        from preprocessors.identity.image_io import load_image

        return load_image(value)
    if isinstance(value, str):
        if value.startswith("data:") and "," in value:
            value = value.split(",", 1)[1]
        try:
            return Image.open(io.BytesIO(base64.b64decode(value, validate=False))).copy()
        except Exception as error:  # noqa: BLE001
            raise UnitValidationError(field_name, "not a base64-encoded image") from error
    raise UnitValidationError(field_name, f"expected an image, got {type(value).__name__}")


def _number(data: dict, name: str, cast=float):
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UnitValidationError(name, f"expected a number, got {type(value).__name__}")
    try:
        value = cast(value)
    except (TypeError, ValueError) as error:
        raise UnitValidationError(name, f"expected a number, got {value!r}") from error
    if name in _RANGES:
        low, high = _RANGES[name]
        if not low <= value <= high:
            raise UnitValidationError(name, f"{value} is outside [{low}, {high}]")
    return value


def unit_from_dict(data: dict) -> UnitParams:
    """Validate an API/UI dict; unknown keys and wrong values raise UnitValidationError naming the field."""
    if not isinstance(data, dict):
        raise UnitValidationError("unit", f"expected an object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(FIELD_ORDER) - {"reference_image"})
    if unknown:
        raise UnitValidationError(unknown[0], f"unknown field (known: {', '.join(FIELD_ORDER)})")
    unit = UnitParams()
    values = dict(data)
    if "reference_image" in values:
        values.setdefault("reference_images", [values.pop("reference_image")])
    for name in FIELD_ORDER:
        if name not in values:
            continue
        if name in ("enabled", "allow_whole_image"):
            if not isinstance(values[name], bool):
                raise UnitValidationError(name, "expected true or false")
            setattr(unit, name, values[name])
        elif name == "face_index":
            setattr(unit, name, int(_number(values, name, float)))
            if unit.face_index < 0:
                raise UnitValidationError(name, "must be 0 (largest face) or more")
        elif name == "model":
            if not isinstance(values[name], str):
                raise UnitValidationError(name, "expected a model name")
            unit.model = values[name]
        elif name == "modes":
            modes = values[name]
            modes = [m.strip() for m in modes.split(",")] if isinstance(modes, str) else list(modes or [])
            bad = [m for m in modes if m not in MODES]
            if bad:
                raise UnitValidationError(name, f"unknown mode(s) {bad}; choose from {list(MODES)}")
            unit.modes = tuple(modes)
        elif name == "resize_mode":
            if values[name] not in RESIZE_MODES:
                raise UnitValidationError(name, f"choose from {list(RESIZE_MODES)}")
            unit.resize_mode = values[name]
        elif name in ("reference_images", "more_reference_images"):
            images = values[name]
            images = images if isinstance(images, (list, tuple)) else [images]
            setattr(unit, name, [decode_image(v, name) for v in images if v is not None])
        elif name == "pose_image":
            unit.pose_image = decode_image(values[name], name)
        else:
            setattr(unit, name, _number(values, name))
    unit.reference_images = unit.reference_images + unit.more_reference_images
    unit.more_reference_images = []
    if unit.start > unit.end:
        raise UnitValidationError("start", f"start ({unit.start}) is after end ({unit.end})")
    if unit.enabled and not unit.reference_images:
        raise UnitValidationError("reference_images", "an enabled unit needs at least one reference photo")
    return unit


def units_from_args(args: tuple | list, fields_per_unit: int = len(FIELD_ORDER)) -> list[UnitParams]:
    """Script arguments -> units: API dicts (the webui keeps the UI's defaults after them), or the UI's flat
    component values in FIELD_ORDER per unit."""
    if args and isinstance(args[0], dict):
        leading = []
        for value in args:
            if not isinstance(value, dict):
                break
            leading.append(unit_from_dict(value))
        return leading
    units = []
    for start in range(0, len(args) - fields_per_unit + 1, fields_per_unit):
        chunk = dict(zip(FIELD_ORDER, args[start: start + fields_per_unit]))
        for name in ("reference_images", "more_reference_images"):
            if chunk.get(name) is None:
                chunk[name] = []
        if not chunk.get("enabled"):
            chunk = {"enabled": False}
        units.append(unit_from_dict(chunk))
    return units
