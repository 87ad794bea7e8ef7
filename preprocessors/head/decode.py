"""Codes -> mesh -> maps in a photo's frame: DECA's `decode(render_orig=True)` as CapHuman calls it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .crop import CROP_SIZE
from .flame import Flame
from .projection import crop_to_image, orthographic
from .renderer import HeadMaps, HeadRenderer
from .texture import FlameTexture


@dataclass
class DecodedHead:
    maps: HeadMaps
    landmarks2d: torch.Tensor  # (B, 68, 2) normalised photo coordinates (x right, y down, -1..1)
    vertices: torch.Tensor  # (B, V, 3) FLAME space
    projected: torch.Tensor  # (B, V, 3) normalised photo coordinates


def decode(code: dict[str, torch.Tensor], flame: Flame, texture: FlameTexture, renderer: HeadRenderer,
           height: int, width: int) -> DecodedHead:
    """Render `code` (shape, tex, exp, pose, cam, light, tform = inverse-transposed crop transform) at H×W."""
    vertices, landmarks2d, _ = flame(code["shape"], code["exp"], code["pose"])
    albedo_uv = texture(code["tex"])
    tform = code["tform"] if code["tform"].dim() == 3 else code["tform"][None]
    projected = crop_to_image(orthographic(vertices, code["cam"]), tform, CROP_SIZE, height, width)
    landmarks = crop_to_image(orthographic(landmarks2d, code["cam"])[:, :, :2], tform, CROP_SIZE, height, width)
    maps = renderer(vertices, projected, albedo_uv, code["light"], height, width)
    return DecodedHead(maps, landmarks[:, :, :2], vertices, projected)
