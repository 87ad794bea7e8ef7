"""DECA's orthographic camera and the move from crop coordinates into the photo's frame (render_orig)."""

from __future__ import annotations

import torch


def orthographic(points: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """`batch_orth_proj` with DECA's y flip: scale * (xy + t), z scaled too; y (and z) negated -> image-down."""
    cam = cam.view(-1, 1, 3)
    projected = torch.cat([points[:, :, :2] + cam[:, :, 1:], points[:, :, 2:]], 2) * cam[:, :, :1]
    return torch.cat([projected[:, :, :1], -projected[:, :, 1:]], 2)


def crop_to_image(points: torch.Tensor, inverse_tform_t: torch.Tensor, crop_size: int, height: int,
                  width: int) -> torch.Tensor:
    """Normalised crop coordinates -> normalised coordinates of the photo frame (H, W).

    inverse_tform_t: `inverse(tform).T` of the crop (what the reference passes as `tform`).
    """
    xy = (points[:, :, :2] * 0.5 + 0.5) * crop_size
    ones = torch.ones_like(xy[:, :, :1])
    moved = torch.bmm(torch.cat([xy, ones], -1), inverse_tform_t)
    x = moved[:, :, 0] / width * 2 - 1
    y = moved[:, :, 1] / height * 2 - 1
    return torch.cat([torch.stack([x, y], -1), points[:, :, 2:]], -1)


def inverse_tform(tform: torch.Tensor) -> torch.Tensor:
    """`torch.inverse(tform).transpose(1, 2)` for (B, 3, 3) or (3, 3) tforms."""
    tform = tform if tform.dim() == 3 else tform[None]
    return torch.inverse(tform).transpose(1, 2)
