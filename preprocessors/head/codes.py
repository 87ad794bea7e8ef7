"""Mix the identity photo's FLAME codes with the pose photo's, per head-control mode (CapHuman's
`create_inter_data`), and apply manual head controls."""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import Enum

import torch


class HeadMode(str, Enum):
    """What a unit copies from its pose photo (the string values are what the API, the UI and the infotext carry)."""

    POSITION = "position"  # where the head is: the crop transform and camera
    POSE = "pose"  # the global head rotation
    EXPRESSION = "expression"  # expression and jaw
    LIGHTING = "lighting"  # spherical-harmonics light


MODES = tuple(mode.value for mode in HeadMode)
DEFAULT_MODES = (HeadMode.POSITION.value, HeadMode.POSE.value)


def parse_modes(modes: str | Iterable[str]) -> tuple[str, ...]:
    """'position,pose' or an iterable -> validated tuple ('all' = every mode)."""
    items = [m.strip().lower() for m in (modes.split(",") if isinstance(modes, str) else modes) if m.strip()]
    if "all" in items:
        return MODES
    unknown = [m for m in items if m not in MODES]
    if unknown:
        raise ValueError(f"unknown head-control mode(s) {unknown}; choose from {', '.join(MODES)}")
    return tuple(items)


def mix_codes(identity: dict[str, torch.Tensor], pose: dict[str, torch.Tensor],
              modes: str | Iterable[str] = DEFAULT_MODES) -> dict[str, torch.Tensor]:
    """Identity codes with, per mode, the pose photo's tform+cam (position), global rotation (pose), expression +
    jaw (expression) or light (lighting). Codes must include `tform` (inverse-transposed crop transform)."""
    modes = parse_modes(modes)
    code = {k: v.clone() for k, v in identity.items()}
    if "position" in modes:
        code["tform"] = pose["tform"].clone()
        code["cam"] = pose["cam"].clone()
    if "pose" in modes:
        code["pose"][:, :3] = pose["pose"][:, :3]
    if "lighting" in modes:
        code["light"] = pose["light"].clone()
    if "expression" in modes:
        code["exp"] = pose["exp"].clone()
        code["pose"][:, 3:] = pose["pose"][:, 3:]
    return code


def euler_to_axis_angle(yaw: float, pitch: float, roll: float) -> torch.Tensor:
    """Degrees (yaw about y, pitch about x, roll about z; R = Ry · Rx · Rz) -> axis-angle (1, 3)."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    cy, sy, cp, sp, cr, sr = math.cos(y), math.sin(y), math.cos(p), math.sin(p), math.cos(r), math.sin(r)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    rx = torch.tensor([[1, 0, 0], [0, cp, -sp], [0, sp, cp]], dtype=torch.float64)
    rz = torch.tensor([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]], dtype=torch.float64)
    rot = ry @ rx @ rz
    angle = math.acos(max(-1.0, min(1.0, (rot.trace().item() - 1) / 2)))
    if angle < 1e-8:
        return torch.zeros(1, 3)
    axis = torch.tensor([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]]) / (2 * math.sin(angle))
    return (axis * angle).float()[None]


def apply_manual(code: dict[str, torch.Tensor], yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0,
                 expression: float = 1.0, jaw_open: float = 0.0,
                 light_direction: tuple[float, float, float] | None = None,
                 light_strength: float = 1.0) -> dict[str, torch.Tensor]:
    """Manual head control on a code dict: head rotation (degrees, sign as seen by the viewer), expression scale,
    jaw opening (radians about x), and a directional light replacing the first-order SH terms."""
    code = {k: v.clone() for k, v in code.items()}
    code["pose"][:, :3] = euler_to_axis_angle(yaw, pitch, roll).to(code["pose"])
    code["exp"] = code["exp"] * expression
    code["pose"][:, 3] = code["pose"][:, 3] + jaw_open
    if light_direction is not None:
        direction = torch.tensor(light_direction, dtype=code["light"].dtype)
        direction = direction / direction.norm().clamp_min(1e-6)
        ambient = code["light"][:, 0:1].mean(-1, keepdim=True).clamp_min(0.5)
        light = torch.zeros_like(code["light"])
        light[:, 0] = ambient[:, 0]
        light[:, 1:4] = (direction[:, None] * ambient[:, 0] * light_strength).to(light)[None]
        code["light"] = light
    return code
