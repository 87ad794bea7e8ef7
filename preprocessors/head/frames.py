"""Placing a photo on the generation canvas as the webui's resize modes do, and mapping head coordinates along.

DECA works on a square photo; we letterbox (pad) the photo to a square instead of distorting it as the reference
does, and map the rendered head from that square into the W×H canvas of the chosen resize mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
from PIL import Image


class ResizeMode(str, Enum):
    """How a photo of another shape fits the W×H canvas: the webui's resize modes. The string values are what the API,
    the UI and the infotext carry."""

    JUST_RESIZE = "Just Resize"
    CROP_AND_RESIZE = "Crop and Resize"
    RESIZE_AND_FILL = "Resize and Fill"


RESIZE_MODES = tuple(mode.value for mode in ResizeMode)


@dataclass(frozen=True)
class SquareFrame:
    """A photo (width × height) padded to a square side × side, then resized to `size`."""

    width: int
    height: int
    size: int

    @property
    def side(self) -> int:
        return max(self.width, self.height)

    @property
    def pad(self) -> tuple[float, float]:
        return (self.side - self.width) / 2, (self.side - self.height) / 2


def letterbox(image: Image.Image, size: int) -> tuple[np.ndarray, SquareFrame]:
    """The photo centred on a black square, resized to size×size (uint8 RGB) and its frame."""
    frame = SquareFrame(image.width, image.height, size)
    square = Image.new("RGB", (frame.side, frame.side))
    square.paste(image.convert("RGB"), (int(frame.pad[0]), int(frame.pad[1])))
    return np.asarray(square.resize((size, size), Image.BICUBIC)), frame


def canvas_mapping(frame: SquareFrame, width: int, height: int, mode: str) -> tuple[float, float, float, float]:
    """(sx, ox, sy, oy): photo pixel (x, y) -> canvas pixel (sx·x + ox, sy·y + oy) for a webui resize mode."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; choose from {RESIZE_MODES}")
    if mode == ResizeMode.JUST_RESIZE:
        return width / frame.width, 0.0, height / frame.height, 0.0
    scale = (max if mode == ResizeMode.CROP_AND_RESIZE else min)(width / frame.width, height / frame.height)
    return scale, (width - frame.width * scale) / 2, scale, (height - frame.height * scale) / 2


def square_to_canvas(points: torch.Tensor, frame: SquareFrame, width: int, height: int, mode: str) -> torch.Tensor:
    """Normalised coordinates of the square frame -> normalised coordinates of the W×H canvas (z kept)."""
    sx, ox, sy, oy = canvas_mapping(frame, width, height, mode)
    px, py = frame.pad
    x = (points[..., 0] + 1) / 2 * frame.side - px
    y = (points[..., 1] + 1) / 2 * frame.side - py
    cx = (sx * x + ox) / width * 2 - 1
    cy = (sy * y + oy) / height * 2 - 1
    return torch.stack([cx, cy, *points[..., 2:].unbind(-1)], -1)


def place_photo(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """The photo on the canvas as the resize mode places it (for previews)."""
    frame = SquareFrame(image.width, image.height, 1)
    sx, ox, sy, oy = canvas_mapping(frame, width, height, mode)
    resized = image.convert("RGB").resize((max(1, round(image.width * sx)), max(1, round(image.height * sy))),
                                          Image.BICUBIC)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(resized, (round(ox), round(oy)))
    return canvas
