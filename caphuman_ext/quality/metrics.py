"""The numbers themselves: identity similarity, per-code RMSE and rotation errors in degrees, from plain tensors.

Choices where the paper (CapHuman, CVPR 2024, Table 1: "ID sim." and the head-control RMSEs of "Shape, Pose, Exp,
Light") leaves the detail open — its evaluation code is not released (VamosC/CapHuman ships no metric script, and
neither does DiffusionRig, whose protocol it follows):
- Each RMSE is over one DECA code of ONE face, `sqrt(mean((generated - target)²))`, and a table averages these
  per-image values (mean of RMSEs, not the RMSE of everything pooled).
- shape: the 100 FLAME shape coefficients; expression: the 50 expression coefficients (the jaw is not in it);
  lighting: the 27 spherical-harmonics numbers (9 bands × RGB) in DECA's raw scale.
- pose: DECA's whole 6-number pose code (global head rotation + jaw, both axis-angle radians), as DECA names it
  "pose". `pose_global` (3) and `jaw` (3) are reported beside it, because the "pose" mode moves only the global
  rotation and the "expression" mode moves the jaw.
- identity similarity: cosine of the L2-normalised 512-d FaceNet (vggface2) embeddings; with several reference
  photos, of their normalised mean (what the model is given).
"""

from __future__ import annotations

import math

import torch

CODE_SLICES = {"shape": ("shape", slice(None)), "pose": ("pose", slice(None)), "expression": ("exp", slice(None)),
               "lighting": ("light", slice(None)), "pose_global": ("pose", slice(0, 3)), "jaw": ("pose", slice(3, 6))}
PAPER_CODES = ("shape", "pose", "expression", "lighting")


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two embeddings of any shape holding one vector each."""
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12))


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean squared difference over every entry of one face's code."""
    return float(((a.detach().double().cpu() - b.detach().double().cpu()) ** 2).mean().sqrt())


def code_errors(generated: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, float]:
    """RMSE per code (shape, pose, expression, lighting, pose_global, jaw) between two DECA code dicts of one face."""
    errors = {}
    for name, (key, part) in CODE_SLICES.items():
        errors[name] = rmse(generated[key].reshape(generated[key].shape[0], -1)[:, part],
                            target[key].reshape(target[key].shape[0], -1)[:, part])
    return errors


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """(3,) axis-angle (radians) -> (3, 3) rotation matrix (Rodrigues), in float64."""
    vector = axis_angle.reshape(3).double().cpu()
    angle = float(vector.norm())
    if angle < 1e-12:
        return torch.eye(3, dtype=torch.float64)
    x, y, z = (vector / angle).tolist()
    k = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def matrix_to_euler(rotation: torch.Tensor) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees for R = Ry(yaw) · Rx(pitch) · Rz(roll): the inverse of
    `preprocessors.head.codes.euler_to_axis_angle`, so the numbers read like the unit's sliders."""
    r = rotation.double()
    pitch = math.asin(max(-1.0, min(1.0, -float(r[1, 2]))))
    yaw = math.atan2(float(r[0, 2]), float(r[2, 2]))
    roll = math.atan2(float(r[1, 0]), float(r[1, 1]))
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def axis_angle_to_euler(axis_angle: torch.Tensor) -> tuple[float, float, float]:
    """(yaw, pitch, roll) degrees of a FLAME global rotation (axis-angle, radians)."""
    return matrix_to_euler(axis_angle_to_matrix(axis_angle))


def _wrapped(degrees: float) -> float:
    return abs((degrees + 180.0) % 360.0 - 180.0)


def rotation_errors(generated_pose: torch.Tensor, target_pose: torch.Tensor) -> dict[str, float]:
    """Readable head-rotation errors in degrees from two pose codes ((1, 6) or (6,); the first 3 = global rotation).

    yaw/pitch/roll: absolute differences of the Euler angles (wrapped to 0..180); rotation: the angle of the
    rotation taking one head orientation to the other (independent of the Euler convention).
    """
    generated = axis_angle_to_matrix(generated_pose.reshape(-1)[:3])
    target = axis_angle_to_matrix(target_pose.reshape(-1)[:3])
    gy, gp, gr = matrix_to_euler(generated)
    ty, tp, tr = matrix_to_euler(target)
    return {"yaw_deg": _wrapped(gy - ty), "pitch_deg": _wrapped(gp - tp), "roll_deg": _wrapped(gr - tr),
            "rotation_deg": math.degrees(rotation_angle(generated @ target.T))}


def rotation_angle(rotation: torch.Tensor) -> float:
    """The angle (radians) of a rotation matrix, as atan2(sin, cos): acos of the trace alone turns rounding of the
    order of 1e-16 into angles of 1e-8 near zero."""
    r = rotation.double()
    sin = 0.5 * math.hypot(float(r[2, 1] - r[1, 2]), float(r[0, 2] - r[2, 0]), float(r[1, 0] - r[0, 1]))
    cos = (float(r.trace()) - 1.0) / 2.0
    return math.atan2(sin, cos)


def euler_of(pose: torch.Tensor) -> dict[str, float]:
    """The head's own yaw/pitch/roll in degrees (for tables that show where a head looked, not only errors)."""
    yaw, pitch, roll = axis_angle_to_euler(pose.reshape(-1)[:3])
    return {"yaw": yaw, "pitch": pitch, "roll": roll}
