"""Face refine: after the image is made, each unit with `refine` on gets an inpaint "only masked" pass over its head,
at a working size, with that unit's identity only and the same head it drew in the first pass (the first pass's head
cut to the pass's crop), blended back through a feathered mask. The head box comes from the head the unit rendered,
not from a detector. This module decides the passes (which unit, box, mask, size); the host runs them as the webui's
own img2img jobs (hosts/refine_pass.py). Imports nothing from the webui.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from .heads import Box, RenderCanvas, head_box

ATTRIBUTE = "caphuman_refine"  # set on a refine pass's processing object: its RefinePlan
FEATHER = 0.08  # the mask's feather (blur radius) as a fraction of the head box's longer side
MIN_FEATHER = 4


@dataclass(frozen=True)
class RefinePlan:
    """One refine pass: unit `position` (its tab), its head `box` in the picture, the inpaint `mask` (the box grown
    by the feather, white), the webui's mask blur `feather`, working `size` (square), `denoise`, `padding` (context
    around the mask in the crop, picture pixels)."""

    position: int
    box: Box
    mask: Image.Image
    feather: int
    size: int
    denoise: float
    padding: int


def refine_mask(picture_size: tuple[int, int], box: Box, feather: int) -> Image.Image:
    """White over `box` grown by `feather` (clipped to the picture): blurred by `feather`, the blend reaches full
    strength on the whole head box and fades out beyond it."""
    left, top = max(0, box[0] - feather), max(0, box[1] - feather)
    right, bottom = min(picture_size[0], box[2] + feather), min(picture_size[1], box[3] + feather)
    mask = Image.new("L", (int(picture_size[0]), int(picture_size[1])), 0)
    ImageDraw.Draw(mask).rectangle((left, top, right - 1, bottom - 1), fill=255)
    return mask


def refine_plans(units: Sequence[tuple[int, object]], picture_size: tuple[int, int], render: RenderCanvas
                 ) -> list[RefinePlan]:
    """The refine passes of one picture of `picture_size` (width, height), in tab order: one per unit (position,
    params) with `refine` on whose head is in the picture."""
    plans = []
    for position, params in units:
        if not getattr(params, "refine", False):
            continue
        box = head_box(render, params, (int(picture_size[0]), int(picture_size[1])))
        if box is None:
            continue
        feather = max(MIN_FEATHER, round(FEATHER * max(box[2] - box[0], box[3] - box[1])))
        plans.append(RefinePlan(position, box, refine_mask(picture_size, box, feather), feather,
                                int(params.refine_size), float(params.refine_denoise), int(params.refine_padding)))
    return plans


__all__ = ["ATTRIBUTE", "RefinePlan", "refine_mask", "refine_plans"]
