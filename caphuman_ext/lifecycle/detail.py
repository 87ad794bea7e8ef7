"""Detail passes of other extensions: a job another extension runs inside a CapHuman job, after that job sampled, with
its script arguments copied (ADetailer's face inpaint, run from its `postprocess_image`: an img2img "only masked"
job over the face it detected). Each unit's `detail_passes` says what it does there:

- "head" (identity + head): the unit's identity and the first pass's head, cut to the pass's crop (a head that does
  not reach the crop adds nothing);
- "identity" (identity only): the unit's identity with its head (pose, expression, light) moved and scaled to fill
  the box of the pass's mask, the face the other extension found, wherever the first pass put the head; without a
  mask the first pass's placement;
- "off": the unit is not in the pass at all (the pass is what it is without CapHuman).

What each unit did in the job's detail passes is one infotext entry of the outer job (`DETAIL_KEY`), which a paste
reads back. Imports nothing from the webui.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..unit.params import DetailPass
from .heads import Box, RenderCanvas, coverage, mask_box

DETAIL_KEY = "CapHuman detail passes"  # "1 head; 2 identity": unit tab (1-based) and what it did
_ENTRY = re.compile(r"^\s*(\d{1,2})\s+(head|identity)\s*$")


def describe_details(details: dict[int, str]) -> str:
    """{unit position (0-based): mode} of the units that acted in a detail pass -> the infotext value."""
    return "; ".join(f"{position + 1} {mode}" for position, mode in sorted(details.items()))


def parse_details(text) -> dict[int, str]:
    """The infotext value back to {position: mode}; never raises (anything unreadable is left out)."""
    found: dict[int, str] = {}
    if not isinstance(text, str) or len(text) > 200:
        return found
    for part in text.split(";"):
        match = _ENTRY.match(part)
        if match and 1 <= int(match.group(1)) <= 16:
            found[int(match.group(1)) - 1] = match.group(2)
    return found


def picture_mask_box(mask) -> Box | None:
    """The box of a PIL mask's masked pixels (over half white: a blurred mask's edge is left out), or None."""
    array = np.asarray(mask.convert("L")) > 127
    return mask_box(torch.from_numpy(array).float())


def replace_head(canvas: torch.Tensor, target: tuple[float, float, float, float]) -> torch.Tensor:
    """The rendered head of `canvas` (1, C, H, W) moved and scaled (keeping its proportions) to fill `target` =
    (left, top, right, bottom) in canvas pixels, centred there; unchanged when the canvas shows no head."""
    source = mask_box(coverage(canvas))
    if source is None or target[2] <= target[0] or target[3] <= target[1]:
        return canvas
    scale = min((target[2] - target[0]) / (source[2] - source[0]), (target[3] - target[1]) / (source[3] - source[1]))
    height, width = canvas.shape[-2:]
    ys = torch.arange(height, dtype=torch.float32, device=canvas.device) + 0.5
    xs = torch.arange(width, dtype=torch.float32, device=canvas.device) + 0.5
    u = (xs - (target[0] + target[2]) / 2) / scale + (source[0] + source[2]) / 2
    v = (ys - (target[1] + target[3]) / 2) / scale + (source[1] + source[3]) / 2
    grid = torch.stack(torch.meshgrid(v / height * 2 - 1, u / width * 2 - 1, indexing="ij")[::-1], -1)[None]
    moved = F.grid_sample(canvas.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved.to(canvas.dtype)


def detail_render(render: RenderCanvas, mask_of: Callable[[], object]) -> RenderCanvas:
    """The renderer of a detail pass: "identity" units' heads moved onto the box of the pass's mask (`mask_of()`:
    the mask over the whole picture, read when the hint is made, after the host set it up), others as rendered."""

    def rendered(params, width: int, height: int) -> torch.Tensor:
        canvas = render(params, width, height)
        if getattr(params, "detail_passes", DetailPass.HEAD) != DetailPass.IDENTITY:
            return canvas
        mask = mask_of()
        box = picture_mask_box(mask) if mask is not None else None
        if box is None:
            return canvas
        sx, sy = width / mask.width, height / mask.height
        return replace_head(canvas, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))

    return rendered


__all__ = ["DETAIL_KEY", "describe_details", "detail_render", "parse_details", "picture_mask_box",
           "replace_head"]
