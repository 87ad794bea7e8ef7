"""Turn whatever a user or the API hands over into an 8-bit RGB PIL image, upright and of sensible size.

`decode_photo` is the one place encoded photos are decoded (API base64, uploaded files, paths): only PNG, JPEG, WebP
and BMP, the declared pixel count checked before decoding (whatever `PIL.Image.MAX_IMAGE_PIXELS` the process has:
the webui's X/Y/Z plot sets it to None), then EXIF orientation, RGB and the size cap of `upright_rgb`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

MAX_SIDE = 2048  # larger photos are downscaled before parsing: BiSeNet runs at full resolution
PHOTO_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")  # never EPS/PS (Pillow runs Ghostscript on them) or exotic formats
MAX_PHOTO_BYTES = 24 * 2**20  # one encoded photo
MAX_PHOTO_PIXELS = 50_000_000  # declared width × height (a 50 MP phone photo passes, a 20000² bomb does not)


class PhotoTooLargeError(ImageError):
    """An encoded photo is larger (bytes or declared pixels) than the limits allow."""


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"expected an image array (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if min(array.shape[:2]) < 1:
        raise ImageError("the reference photo is empty")
    if array.dtype == np.uint16:
        array = (array / 257.0).round().astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.nan_to_num(np.asarray(image).astype(np.float64))
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent = white, as painted-out parts
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _exif_upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; unreadable EXIF leaves it as stored."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - broken metadata must not lose the photo
        return image


def upright_rgb(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """EXIF orientation applied, alpha composited on white, 16-bit/float scaled to 8 bits, downscaled (Lanczos,
    keeping the aspect ratio) to at most `max_side`. Idempotent: a second call returns an equal image."""
    image = _to_rgb(_exif_upright(image))
    if min(image.size) < 1:
        raise ImageError("the reference photo is empty")
    if max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.LANCZOS)
    return image


def _read_bytes(source, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        try:
            with path.open("rb") as file:
                data = file.read(max_bytes + 1)
        except OSError as error:
            raise ImageError(f"{path.name} could not be read ({error.strerror or error})") from error
    else:
        raise ImageError(f"cannot read an image from {type(source).__name__}")
    if len(data) > max_bytes:
        raise PhotoTooLargeError(f"the photo is over {max_bytes} bytes, the most a photo may have")
    return data


def working_pixels(width: int, height: int, max_side: int = MAX_SIDE) -> int:
    """Pixels of a width × height photo once `upright_rgb` has downscaled it to at most `max_side` (the size every
    stage works at: what a photo costs, whatever it declares)."""
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)) * max(1, round(height * scale))


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """The photo opened lazily (only its header read): allowed format, declared size within `max_pixels`."""
    try:
        image = Image.open(io.BytesIO(data), formats=PHOTO_FORMATS)
    except Image.DecompressionBombError as error:
        raise PhotoTooLargeError(f"the photo declares too many pixels ({error})") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageError("not a PNG, JPEG, WebP or BMP image") from error
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError("the photo is empty (0 pixels)")
    if width * height > max_pixels:
        raise PhotoTooLargeError(f"the photo declares {width}×{height} pixels; at most {max_pixels} pixels "
                                 "are accepted")
    return image


def inspect_photo(source, max_bytes: int = MAX_PHOTO_BYTES, max_pixels: int = MAX_PHOTO_PIXELS) -> tuple[int, int]:
    """(width, height) an encoded photo (bytes or a path) declares, with the checks of `decode_photo` that need no
    pixels: bytes, format, declared pixels. No pixel is decoded (Pillow's `open` reads the header only)."""
    image = _open_checked(_read_bytes(source, max_bytes), max_pixels)
    return image.size


def decode_photo(source, max_bytes: int = MAX_PHOTO_BYTES, max_pixels: int = MAX_PHOTO_PIXELS,
                 max_side: int = MAX_SIDE) -> Image.Image:
    """Encoded photo (bytes or a path) -> `upright_rgb` image. Raises ImageError (PhotoTooLargeError for size)."""
    image = _open_checked(_read_bytes(source, max_bytes), max_pixels)
    try:
        image.load()
        return upright_rgb(image, max_side)
    except ImageError:
        raise
    except Exception as error:  # noqa: BLE001 - any decoder failure on hostile data is "not readable"
        raise ImageError(f"the {image.format} photo could not be decoded ({error})") from error


def load_image(source, max_side: int = MAX_SIDE) -> Image.Image:
    """RGB uint8 PIL image from a PIL image, numpy array, path or encoded bytes (see `upright_rgb`; encoded data goes
    through `decode_photo` and its limits)."""
    if isinstance(source, Image.Image):
        try:
            source.load()
        except (OSError, ValueError) as error:
            raise ImageError(f"the reference photo could not be read as an image ({error})") from error
        return upright_rgb(source, max_side)
    if isinstance(source, np.ndarray):
        return upright_rgb(_from_array(source), max_side)
    if isinstance(source, (str, Path, bytes, bytearray)):
        try:
            return decode_photo(source, max_side=max_side)
        except PhotoTooLargeError:
            raise
        except ImageError as error:
            raise ImageError(f"the reference photo could not be read as an image ({error})") from error
    raise ImageError(f"cannot read an image from {type(source).__name__}")
