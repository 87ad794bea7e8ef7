"""When a unit acts during sampling, and which UNet rows share a CapFace pass."""

from __future__ import annotations


def active_at(step: int, total_steps: int, start: float, end: float) -> bool:
    """Whether a unit with window [start, end] (fractions of sampling) works at this step (0-based)."""
    if total_steps <= 0:
        return True
    progress = step / total_steps
    return start <= progress and (progress < end or end >= 1.0)


def pose_only_tau(pose_only: float, timesteps: int = 1000) -> float:
    """The reference's tau from "pose-only for the first fraction of sampling": identity off while t > tau.

    Sampling runs from t≈999 down to 0, so the first `pose_only` fraction is t > (1 - pose_only) × 1000.
    """
    if pose_only <= 0:
        return 0.0
    return max(1e-3, (1.0 - pose_only) * timesteps)


def cfg_row_sources(total_rows: int, cond_rows: int) -> list[int] | None:
    """Row -> image of the webui's CFG batch: each image's cond rows (repeated for AND-prompts), then its uncond
    row. None when the layout is not that (then every row is computed)."""
    images = total_rows - cond_rows
    if images <= 0 or cond_rows % images:
        return None
    repeats = cond_rows // images
    return [i for i in range(images) for _ in range(repeats)] + list(range(images))
