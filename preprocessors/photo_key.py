"""The key the preprocessors cache results under: a photo's pixels and size plus what else the result depends on."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image


def photo_key(image: Image.Image, *options) -> str:
    """SHA-256 of the RGB pixels, the size and `repr(options)` (pass arrays as bytes to key them exactly)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.sha256(np.asarray(rgb).tobytes())
    digest.update(repr((image.size, options)).encode())
    return digest.hexdigest()
