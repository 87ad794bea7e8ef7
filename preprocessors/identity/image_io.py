"""Turn whatever a user or the API hands over into an 8-bit RGB PIL image, upright and of sensible size."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

MAX_SIDE = 2048  # larger photos are downscaled before parsing: BiSeNet runs at full resolution


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"expected an image array (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if array.dtype == np.uint16:
        array = (array / 257.0).round().astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image).astype(np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent = white, as painted-out parts
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source, max_side: int = MAX_SIDE) -> Image.Image:
    """RGB uint8 PIL image from a PIL image, numpy array, path or encoded bytes.

    EXIF orientation is applied; alpha is composited on white; 16-bit and float data are scaled to 8 bits; images
    larger than `max_side` are downscaled (Lanczos), keeping the aspect ratio.
    """
    try:
        if isinstance(source, Image.Image):
            image = source
        elif isinstance(source, np.ndarray):
            image = _from_array(source)
        elif isinstance(source, (bytes, bytearray)):
            image = Image.open(io.BytesIO(source))
        elif isinstance(source, (str, Path)):
            image = Image.open(source)
        else:
            raise ImageError(f"cannot read an image from {type(source).__name__}")
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageError(f"the reference photo could not be read as an image ({error})") from error
    image = _to_rgb(ImageOps.exif_transpose(image))
    if min(image.size) < 1:
        raise ImageError("the reference photo is empty")
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.LANCZOS)
    return image
