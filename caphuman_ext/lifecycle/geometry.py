"""Where a sampled latent sits in the picture the head is placed in, and how to render a hint exactly 8× its size.

The head's placement (sliders, or the pose photo under a resize mode) is defined on a *canvas*: the picture the user
gets. A sampling pass covers a *box* of that canvas with a latent of (h, w) cells; the hint is the canvas rendered at
the latent's pixel density, cropped to the box. First pass: the box is the whole canvas. Hires: the canvas is the
first pass's picture and the box is what survives the webui's latent truncation. Inpaint "Only masked": the canvas is
the whole picture and the box is the crop region the webui samples.
"""

from __future__ import annotations

from dataclasses import dataclass

LATENT_SCALE = 8
MAX_RENDER_PIXELS = 4096 * 4096  # beyond this the canvas is rendered smaller and the crop resized


@dataclass(frozen=True)
class Frame:
    """canvas: (width, height) in pixels; box: (x, y, width, height) the latent covers, in canvas pixels."""

    canvas: tuple[float, float]
    box: tuple[float, float, float, float]

    @property
    def is_full(self) -> bool:
        return self.box == (0.0, 0.0, float(self.canvas[0]), float(self.canvas[1]))


@dataclass(frozen=True)
class RenderPlan:
    """Render the canvas at `size` (width, height), crop `crop` (x, y, width, height), resize to `hint` (w, h)."""

    size: tuple[int, int]
    crop: tuple[int, int, int, int]
    hint: tuple[int, int]

    @property
    def needs_resize(self) -> bool:
        return self.crop[2:] != self.hint


def full_frame(latent_hw: tuple[int, int]) -> Frame:
    """A pass that samples the whole picture: the canvas is the latent's pixel size (8 × latent)."""
    h, w = latent_hw
    canvas = (float(w * LATENT_SCALE), float(h * LATENT_SCALE))
    return Frame(canvas, (0.0, 0.0, *canvas))


def hires_frame(first_latent_hw: tuple[int, int], upscaled_latent_hw: tuple[int, int], latent_hw: tuple[int, int],
                truncate_xy: tuple[int, int]) -> Frame:
    """The hires pass of A1111: the first pass's picture upscaled to `upscaled_latent_hw` latent cells, then
    `latent[ty//2 : H - (ty+1)//2, tx//2 : W - (tx+1)//2]` (modules/processing.py); falls back to the whole canvas
    when the sizes do not add up (another extension changed the latent)."""
    canvas = full_frame(first_latent_hw).canvas
    (up_h, up_w), (h, w), (tx, ty) = upscaled_latent_hw, latent_hw, truncate_xy
    if up_h - ty != h or up_w - tx != w or min(up_h, up_w, h, w) <= 0:
        return Frame(canvas, (0.0, 0.0, *canvas))
    cell_x, cell_y = canvas[0] / up_w, canvas[1] / up_h
    return Frame(canvas, ((tx // 2) * cell_x, (ty // 2) * cell_y, w * cell_x, h * cell_y))


def crop_frame(canvas_size: tuple[int, int], paste_to: tuple[int, int, int, int]) -> Frame:
    """Inpaint "Only masked": the webui samples `paste_to` = (x, y, width, height) of the whole picture."""
    x, y, w, h = (float(v) for v in paste_to)
    if w <= 0 or h <= 0:
        raise ValueError(f"empty crop region {paste_to}")
    return Frame((float(canvas_size[0]), float(canvas_size[1])), (x, y, w, h))


def render_plan(frame: Frame, latent_hw: tuple[int, int], max_pixels: int = MAX_RENDER_PIXELS) -> RenderPlan:
    """How to get a hint of exactly (8h, 8w) pixels showing `frame.box` of the canvas."""
    h, w = latent_hw
    return picture_plan(frame, (w * LATENT_SCALE, h * LATENT_SCALE), max_pixels)


def picture_plan(frame: Frame, size: tuple[int, int], max_pixels: int = MAX_RENDER_PIXELS) -> RenderPlan:
    """How to get a render of exactly `size` = (width, height) pixels showing `frame.box` of the canvas."""
    hint = (int(size[0]), int(size[1]))
    canvas_w, canvas_h = frame.canvas
    box_x, box_y, box_w, box_h = frame.box
    scale_x, scale_y = hint[0] / box_w, hint[1] / box_h
    limit = min(1.0, (max_pixels / max(1.0, canvas_w * scale_x * canvas_h * scale_y)) ** 0.5)
    scale_x, scale_y = scale_x * limit, scale_y * limit
    crop_w, crop_h = max(1, round(box_w * scale_x)), max(1, round(box_h * scale_y))
    if limit == 1.0:
        crop_w, crop_h = hint
    size = (max(crop_w, round(canvas_w * scale_x)), max(crop_h, round(canvas_h * scale_y)))
    x = min(max(0, round(box_x * scale_x)), size[0] - crop_w)
    y = min(max(0, round(box_y * scale_y)), size[1] - crop_h)
    return RenderPlan(size, (x, y, crop_w, crop_h), hint)
