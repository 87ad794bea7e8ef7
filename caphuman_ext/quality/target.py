"""The head a unit asked for: its DECA codes (the code mixing that drives the hint) and its placement on the canvas.

The codes follow `HeadPipeline._render` branch for branch — identity photo codes, mixed with the pose photo's per
mode (`mix_codes`; a unit without modes uses the default modes, as `UnitBuilder.render` does), or the sliders
applied to the identity's codes (`apply_manual`) — because the hint keeps only the rendered maps, not the codes.
The placement (68 landmarks in canvas pixels) is the hint's own, from the same cached `UnitBuilder.render` call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from caphuman_ext.unit.builder import UnitBuilder, manual_head
from caphuman_ext.unit.params import UnitParams
from preprocessors.head.codes import DEFAULT_MODES, apply_manual, mix_codes
from preprocessors.head.pipeline import HeadHint, HeadPipeline


@dataclass
class TargetHead:
    codes: dict[str, torch.Tensor]  # shape, tex, exp, pose, cam, light (+ tform): what the hint was rendered from
    hint: HeadHint  # the rendered target at the image size (landmarks in canvas pixels)

    @property
    def landmarks(self) -> np.ndarray:
        return self.hint.landmarks


def target_codes(head: HeadPipeline, unit: UnitParams) -> dict[str, torch.Tensor]:
    """DECA codes of the head `unit` asks for (first reference photo = identity, as the hint uses)."""
    identity = head.photo_codes(unit.reference_images[0])
    with torch.no_grad():
        if unit.pose_image is not None:
            pose = head.photo_codes(unit.pose_image)
            return mix_codes(identity.codes, pose.codes, unit.modes or DEFAULT_MODES)
        manual = manual_head(unit)
        return apply_manual(identity.codes, manual.yaw, manual.pitch, manual.roll, manual.expression,
                            manual.jaw_open, manual.light_direction, manual.light_strength)


def target_head(builder: UnitBuilder, unit: UnitParams, width: int, height: int,
                device: torch.device) -> TargetHead:
    """Codes and rendered placement of `unit`'s head on a width × height image."""
    hint = builder.render(unit, width, height, device)
    return TargetHead(target_codes(builder.head_pipeline(device), unit), hint)
