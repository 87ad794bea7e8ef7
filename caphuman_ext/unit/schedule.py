"""The reference's pose-only threshold, for the Python API (the webui counts the pose-only phase in steps)."""

from __future__ import annotations


def pose_only_tau(pose_only: float, timesteps: int = 1000) -> float:
    """The reference's tau from "pose-only for the first fraction of sampling": identity off while t > tau.

    Sampling runs from t≈999 down to 0, so the first `pose_only` fraction is t > (1 - pose_only) × 1000.
    """
    if pose_only <= 0:
        return 0.0
    return max(1e-3, (1.0 - pose_only) * timesteps)
