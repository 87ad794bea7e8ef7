"""A picture instead of numbers: the target head's landmarks (green, drawn by the head preview) over the generated
image, with the landmarks of the head fitted to each generated face (red) and the matched face boxes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from preprocessors.head.pipeline import HeadHint, HeadPipeline

FITTED_COLOUR = (255, 40, 40)
BOX_COLOUR = (255, 220, 0)


def landmarks_overlay(head: HeadPipeline, image: Image.Image, targets: list[HeadHint],
                      fitted: list[np.ndarray | None], boxes: list[tuple[float, float, float, float] | None]
                      ) -> Image.Image:
    """`image` with every target's landmarks (HeadPipeline.preview), fitted landmarks and matched face boxes."""
    overlay = image.convert("RGB")
    for hint in targets:
        overlay = head.preview(hint, overlay, "Just Resize")["landmarks"]
    draw = ImageDraw.Draw(overlay)
    radius = max(1, round(min(overlay.size) / 200))
    for points in fitted:
        for x, y in ([] if points is None else points):
            draw.rectangle((x - radius, y - radius, x + radius, y + radius), fill=FITTED_COLOUR)
    for box in boxes:
        if box is not None:
            draw.rectangle(box, outline=BOX_COLOUR, width=max(1, radius))
    return overlay
