"""Where a unit's head is in a picture, from the head it renders (no face detector): the rendered hint's coverage as a
mask, and that mask's box. A picture shows `frame.box` of the canvas the head is placed on (the whole picture, a
hires crop, an inpaint "only masked" region). Imports nothing from the webui."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .geometry import Frame, picture_plan

# (unit params, canvas width, canvas height) -> hint (1, 9, H, W) of the whole canvas
RenderCanvas = Callable[[object, int, int], torch.Tensor]
Box = tuple[int, int, int, int]  # (left, top, right, bottom) in pixels, right and bottom exclusive


def whole_frame(size: tuple[int, int]) -> Frame:
    """A picture that is the whole canvas: `size` = (width, height)."""
    width, height = float(size[0]), float(size[1])
    return Frame((width, height), (0.0, 0.0, width, height))


def render_picture(render: RenderCanvas, params: object, size: tuple[int, int], frame: Frame | None = None
                   ) -> torch.Tensor:
    """The unit's hint for a picture of `size` = (width, height) showing `frame.box` (default: the whole canvas of
    that size): exactly (1, 9, height, width)."""
    plan = picture_plan(frame or whole_frame(size), size)
    canvas = render(params, *plan.size)
    x, y, w, h = plan.crop
    hint = canvas[..., y:y + h, x:x + w]
    if plan.needs_resize:
        hint = F.interpolate(hint, size=(plan.hint[1], plan.hint[0]), mode="bilinear", align_corners=False)
    return hint.contiguous()


def coverage(hint: torch.Tensor) -> torch.Tensor:
    """Where a hint shows the head: 1 where its normal map is non-zero (the renderer's normals are 0 off the head),
    else 0; (B, 1, H, W) float."""
    return (hint[:, :3].abs().sum(1, keepdim=True) > 0).float()


def mask_box(mask: torch.Tensor, threshold: float = 0.5) -> Box | None:
    """The box of the pixels of a (..., H, W) mask above `threshold`, None when there are none."""
    plane = mask.reshape(-1, *mask.shape[-2:]).amax(0) > threshold
    rows, cols = plane.any(1).nonzero(), plane.any(0).nonzero()
    if rows.numel() == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def head_mask(render: RenderCanvas, params: object, size: tuple[int, int], frame: Frame | None = None
              ) -> torch.Tensor:
    """The unit's head in a picture of `size` showing `frame.box`: (1, 1, height, width), 1 on the head, 0 off it."""
    return coverage(render_picture(render, params, size, frame))


def head_box(render: RenderCanvas, params: object, size: tuple[int, int], frame: Frame | None = None) -> Box | None:
    """The box of the unit's head in a picture of `size` showing `frame.box`; None when no head pixel is in it."""
    return mask_box(head_mask(render, params, size, frame))


__all__ = ["Box", "RenderCanvas", "coverage", "head_box", "head_mask", "mask_box", "render_picture", "whole_frame"]
