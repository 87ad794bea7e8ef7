"""One CapHuman unit's parameters: defaults, the order the UI passes them in, and validation with field names.

Every value from the UI, the API or a pasted infotext goes through `unit_from_dict`: wrong types, NaN/Infinity,
integers too large for a float, unknown modes and hostile images all raise UnitValidationError naming the field
(UnitTooLargeError where a size limit was passed); nothing else escapes.
"""

from __future__ import annotations

import base64
import binascii
import math
import numbers
import re
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from preprocessors.head.codes import MODES
from preprocessors.head.frames import RESIZE_MODES
from preprocessors.identity.errors import ImageError
from preprocessors.identity.image_io import (
    MAX_PHOTO_BYTES,
    MAX_SIDE,
    PhotoTooLargeError,
    decode_photo,
    inspect_photo,
    load_image,
    working_pixels,
)


class ActIn(str, Enum):
    """`passes`: the sampling passes a unit acts in (string values: API, infotext, X/Y/Z)."""

    BOTH = "both"
    FIRST = "first"  # the first pass only
    HIRES = "hires"  # the hires pass only


class DetailPass(str, Enum):
    """`detail_passes`: what a unit does in another extension's detail pass (ADetailer's face inpaint)."""

    HEAD = "head"  # identity + the first pass's head, cut to the pass's crop
    IDENTITY = "identity"  # identity, the unit's head moved onto the pass's mask
    OFF = "off"  # nothing


PASSES = tuple(value.value for value in ActIn)
DETAIL_PASSES = tuple(value.value for value in DetailPass)
MAX_PHOTOS = 8  # reference photos per unit (the first plus the UI's "more photos")
# The work one request may ask for, over all its units (reference and pose photos): every photo is parsed, encoded
# and fitted at its working size (at most MAX_SIDE a side, as `upright_rgb` downscales it; the reference pipeline
# parses photos at full size, so no smaller working size leaves its results unchanged). Eight full-size photos'
# worth: ~2 minutes of identity encoding on a CPU, where 32 photos of 49 MP took 7-8.
MAX_REQUEST_PHOTOS = 16
MAX_REQUEST_PIXELS = 8 * MAX_SIDE * MAX_SIDE
MAX_FACE_INDEX = 32
MAX_MODEL_NAME = 255
_MODEL_NAME = re.compile(r"[^\x00-\x1f\x7f/\\;]+")  # a file name from the model list: no separators or controls


class UnitValidationError(ValueError):
    """A unit parameter is wrong; `field` names it (API answers 422 with it)."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


class UnitTooLargeError(UnitValidationError):
    """A photo is larger than the limits (API answers 413)."""


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
    passes: str = "both"  # the sampling passes the unit acts in: both, the first only, the hires pass only
    detail_passes: str = "head"  # in detail passes of other extensions (see DETAIL_PASSES)
    refine: bool = False  # face refine: after the image, an inpaint pass over this unit's head (lifecycle/refine.py)
    refine_denoise: float = 0.4
    refine_size: int = 512  # the pass's working size (square), pixels
    refine_padding: int = 32  # context around the head box in the pass, pixels of the picture


FIELD_ORDER = [f.name for f in fields(UnitParams)]
RANGES = {"strength": (0.0, 2.0), "start": (0.0, 1.0), "end": (0.0, 1.0), "pose_only": (0.0, 1.0),
          "yaw": (-90.0, 90.0), "pitch": (-60.0, 60.0), "roll": (-60.0, 60.0), "center_x": (0.0, 1.0),
          "center_y": (0.0, 1.0), "scale": (0.05, 1.5), "expression": (0.0, 2.0), "jaw_open": (-0.2, 0.6),
          "light_yaw": (-180.0, 180.0), "light_pitch": (-90.0, 90.0), "light_strength": (0.0, 3.0),
          "refine_denoise": (0.05, 1.0)}
WHOLE_RANGES = {"refine_size": (64, 2048, 8), "refine_padding": (0, 512, 1)}  # (low, high, multiple of)
_RANGES = RANGES  # older name


def describe(value: Any) -> str:
    """A short, safe description of a rejected value (never the repr of a huge or deeply nested object)."""
    if isinstance(value, (bool, int, float)) and not (isinstance(value, int) and abs(value) > 10**20):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"a string of {len(value)} characters"
    if isinstance(value, int):
        return f"an integer of {len(str(abs(value))) if abs(value) < 10**4000 else 'over 4000'} digits"
    return f"a {type(value).__name__}"


@dataclass(frozen=True)
class PhotoInfo:
    """An encoded photo checked without decoding its pixels (`check_unit`): the size its header declares."""

    width: int
    height: int


def _as_image(image, field_name: str):
    try:
        return load_image(image)
    except PhotoTooLargeError as error:
        raise UnitTooLargeError(field_name, str(error)) from error
    except ImageError as error:
        raise UnitValidationError(field_name, str(error)) from error


def _decode(data, field_name: str, what: str, decode: bool = True):
    try:
        return decode_photo(data) if decode else PhotoInfo(*inspect_photo(data))
    except PhotoTooLargeError as error:
        raise UnitTooLargeError(field_name, str(error)) from error
    except ImageError as error:
        raise UnitValidationError(field_name, f"{what}: {error}") from error


def decode_image(value: Any, field_name: str, _depth: int = 0, decode: bool = True):
    """Upright RGB PIL image (see preprocessors.identity.image_io) from a PIL/numpy image, a base64 string (optionally
    a data URL), raw bytes, a gradio image dict or an uploaded file; encoded data is decoded by `decode_photo` with
    its format and size limits. `decode=False` runs every check that needs no pixels and returns a `PhotoInfo` for
    encoded data (the size a PIL image already has for a PIL image)."""
    from PIL import Image

    if value is None:
        return None
    if isinstance(value, Image.Image) and not decode:
        return PhotoInfo(*value.size)
    if isinstance(value, Image.Image) or hasattr(value, "shape"):
        return _as_image(value, field_name)
    if isinstance(value, dict) and _depth == 0:  # gradio image editor / file objects
        inner = next((value[k] for k in ("image", "composite", "background") if value.get(k) is not None), None)
        return decode_image(inner, field_name, 1, decode)  # an editor holding no image: no image
    if isinstance(value, (bytes, bytearray)):
        return _decode(bytes(value), field_name, "not a readable image", decode)
    if hasattr(value, "name") and not isinstance(value, str):  # an uploaded file (gradio File)
        return _decode(Path(str(value.name)), field_name, f"{Path(str(value.name)).name} is not a readable image",
                       decode)
    if isinstance(value, str):
        if value.startswith("data:") and "," in value:
            value = value.split(",", 1)[1]
        if len(value) * 3 // 4 > MAX_PHOTO_BYTES + 3:
            raise UnitTooLargeError(field_name, f"the photo is about {len(value) * 3 // 4} bytes; photos may be at "
                                    f"most {MAX_PHOTO_BYTES} bytes")
        try:
            data = base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError) as error:
            raise UnitValidationError(field_name, "not a base64-encoded image") from error
        return _decode(data, field_name, "not a base64-encoded PNG, JPEG, WebP or BMP image", decode)
    raise UnitValidationError(field_name, f"expected an image, got {describe(value)}")


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise UnitValidationError(name, f"expected a number, got {describe(value)}")
    if isinstance(value, str) and len(value) > 64:
        raise UnitValidationError(name, f"expected a number, got {describe(value)}")
    try:
        number = float(value)
    except OverflowError as error:
        raise UnitValidationError(name, f"{describe(value)} is too large") from error
    except (TypeError, ValueError) as error:
        raise UnitValidationError(name, f"expected a number, got {describe(value)}") from error
    if not math.isfinite(number):
        raise UnitValidationError(name, f"expected a finite number, got {describe(value)}")
    return number


def _number(data: dict, name: str) -> float:
    value = _finite(data[name], name)
    if name in RANGES:
        low, high = RANGES[name]
        if not low <= value <= high:
            raise UnitValidationError(name, f"{value:g} is outside [{low:g}, {high:g}]")
    return value


def _face_index(value: Any) -> int:
    number = _finite(value, "face_index")
    if not number.is_integer() or not 0 <= number <= MAX_FACE_INDEX:
        raise UnitValidationError("face_index", f"expected a whole number from 0 (largest face) to {MAX_FACE_INDEX}, "
                                  f"got {describe(value)}")
    return int(number)


def parse_modes(value: Any) -> tuple[str, ...]:
    """A list of mode names or 'position,pose' / 'position+pose' ('all' = every mode) -> a non-empty tuple."""
    if isinstance(value, str):
        if len(value) > 200:
            raise UnitValidationError("modes", f"expected mode names, got {describe(value)}")
        items = re.split(r"[,+]", value)
    elif isinstance(value, (list, tuple)):
        if len(value) > len(MODES) * 2 or not all(isinstance(m, str) and len(m) <= 40 for m in value):
            raise UnitValidationError("modes", f"expected a list of mode names from {list(MODES)}")
        items = list(value)
    else:
        raise UnitValidationError("modes", f"expected a list of mode names from {list(MODES)}, got {describe(value)}")
    names = [m.strip().lower() for m in items if m.strip()]
    if "all" in names:
        return MODES
    bad = [m for m in names if m not in MODES]
    if bad:
        raise UnitValidationError("modes", f"unknown mode(s) {bad}; choose from {list(MODES)}")
    if not names:
        raise UnitValidationError("modes", f"choose at least one of {list(MODES)} (what the pose photo or the head "
                                  "sliders set; position and pose are the defaults)")
    return tuple(dict.fromkeys(names))


def check_passes(value: Any) -> str:
    if not isinstance(value, str) or value not in PASSES:
        raise UnitValidationError("passes", f"choose from {list(PASSES)}, got {describe(value)}")
    return value


def check_whole(value: Any, name: str) -> int:
    """A whole number in WHOLE_RANGES[name] (a float like 512.0 from a UI slider too)."""
    number = _finite(value, name)
    low, high, multiple = WHOLE_RANGES[name]
    if not number.is_integer() or not low <= number <= high or int(number) % multiple:
        step = f", a multiple of {multiple}" if multiple > 1 else ""
        raise UnitValidationError(name, f"expected a whole number from {low} to {high}{step}, got {describe(value)}")
    return int(number)


def check_detail_passes(value: Any) -> str:
    if not isinstance(value, str) or value not in DETAIL_PASSES:
        raise UnitValidationError("detail_passes", f"choose from {list(DETAIL_PASSES)}, got {describe(value)}")
    return value


def check_model_name(value: Any) -> str:
    if not isinstance(value, str):
        raise UnitValidationError("model", f"expected a model file name, got {describe(value)}")
    if value and (len(value) > MAX_MODEL_NAME or not _MODEL_NAME.fullmatch(value) or value != value.strip()):
        raise UnitValidationError("model", f"{describe(value)} is not a model file name from the list")
    return value


def _photo_list(value: Any, name: str) -> list:
    images = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in images if v is not None]


def _numbered_photo(value: Any, name: str, index: int, count: int, decode: bool = True):
    try:
        return decode_image(value, name, decode=decode)
    except UnitValidationError as error:
        if count > 1:
            error.reason = f"photo {index + 1}: {error.reason}"
            error.args = (f"{name}: {error.reason}",)
        raise


def unit_from_dict(data: dict, decode: bool = True) -> UnitParams:
    """Validate an API/UI dict; unknown keys and wrong values raise UnitValidationError naming the field.
    `decode=False`: see `check_unit`."""
    if not isinstance(data, dict):
        raise UnitValidationError("unit", f"expected an object, got {describe(data)}")
    unknown = sorted(str(k) for k in set(data) - set(FIELD_ORDER) - {"reference_image"})
    if unknown:
        raise UnitValidationError(unknown[0][:60], f"unknown field {describe(unknown[0])} (known: "
                                  f"{', '.join(FIELD_ORDER)})")
    unit = UnitParams()
    values = dict(data)
    if "reference_image" in values:
        values.setdefault("reference_images", [values.pop("reference_image")])
        values.pop("reference_image", None)
    photos = {name: _photo_list(values.get(name), name) for name in ("reference_images", "more_reference_images")}
    count = sum(len(v) for v in photos.values())
    if count > MAX_PHOTOS:
        raise UnitValidationError("reference_images", f"{count} photos; a unit takes at most {MAX_PHOTOS}")
    for name in FIELD_ORDER:
        if name not in values:
            continue
        value = values[name]
        if name in ("enabled", "allow_whole_image", "refine"):
            if not isinstance(value, bool):
                raise UnitValidationError(name, f"expected true or false, got {describe(value)}")
            setattr(unit, name, value)
        elif name == "face_index":
            unit.face_index = _face_index(value)
        elif name == "model":
            unit.model = check_model_name(value)
        elif name == "modes":
            unit.modes = parse_modes(value)
        elif name == "passes":
            unit.passes = check_passes(value)
        elif name == "detail_passes":
            unit.detail_passes = check_detail_passes(value)
        elif name in WHOLE_RANGES:
            setattr(unit, name, check_whole(value, name))
        elif name == "resize_mode":
            if not isinstance(value, str) or value not in RESIZE_MODES:
                raise UnitValidationError(name, f"choose from {list(RESIZE_MODES)}, got {describe(value)}")
            unit.resize_mode = value
        elif name in photos:
            decoded = [_numbered_photo(v, name, i, len(photos[name]), decode) for i, v in enumerate(photos[name])]
            setattr(unit, name, [image for image in decoded if image is not None])
        elif name == "pose_image":
            unit.pose_image = decode_image(value, name, decode=decode)
        else:
            setattr(unit, name, _number(values, name))
    unit.reference_images = unit.reference_images + unit.more_reference_images
    unit.more_reference_images = []
    if unit.start > unit.end:
        raise UnitValidationError("start", f"start ({unit.start:g}) is after end ({unit.end:g})")
    if unit.enabled and not unit.reference_images:
        raise UnitValidationError("reference_images", "an enabled unit needs at least one reference photo")
    return unit


def check_unit(data: dict) -> UnitParams:
    """`unit_from_dict` without decoding a pixel: structure, types, bounds, base64 and photo headers (format,
    declared size) are checked; photos given encoded are `PhotoInfo`s. What the API checks before the webui runs a
    request: the photos are decoded once, at generation."""
    return unit_from_dict(data, decode=False)


def _photos_of(unit: UnitParams) -> list:
    return [*unit.reference_images, *unit.more_reference_images,
            *([unit.pose_image] if unit.pose_image is not None else [])]


def check_request_work(units: list[UnitParams]) -> None:
    """The work a request asks for, over all its units: at most MAX_REQUEST_PHOTOS photos and MAX_REQUEST_PIXELS
    pixels at their working size (UnitTooLargeError naming `reference_images`)."""
    sizes = [(photo.width, photo.height) if hasattr(photo, "width") else tuple(photo.shape[1::-1])
             for unit in units for photo in _photos_of(unit)]
    if len(sizes) > MAX_REQUEST_PHOTOS:
        raise UnitTooLargeError("reference_images", f"{len(sizes)} photos in the request (reference and pose photos "
                                f"of every unit); at most {MAX_REQUEST_PHOTOS} are accepted")
    work = sum(working_pixels(int(w), int(h)) for w, h in sizes)
    if work > MAX_REQUEST_PIXELS:
        raise UnitTooLargeError("reference_images", f"the request's photos are {work:,} pixels at their working size "
                                f"(at most {MAX_SIDE} a side); at most {MAX_REQUEST_PIXELS:,} are accepted")


def units_from_args(args: tuple | list, fields_per_unit: int = len(FIELD_ORDER)) -> list[UnitParams]:
    """Script arguments -> units in their positions (disabled ones included): API dicts (the webui keeps the UI's
    defaults after them), or the UI's flat component values in FIELD_ORDER per unit. The request's work is bounded
    (`check_request_work`, from the photos' headers) before any photo is decoded."""
    if args and isinstance(args[0], dict):
        chunks = []
        for value in args:
            if not isinstance(value, dict):
                break
            chunks.append(value)
    else:
        chunks = []
        for start in range(0, len(args) - fields_per_unit + 1, fields_per_unit):
            chunk = dict(zip(FIELD_ORDER, args[start: start + fields_per_unit]))
            for name in ("reference_images", "more_reference_images"):
                if chunk.get(name) is None:
                    chunk[name] = []
            chunks.append(chunk if chunk.get("enabled") else {"enabled": False})
    check_request_work([check_unit(chunk) for chunk in chunks])
    return [unit_from_dict(chunk) for chunk in chunks]

