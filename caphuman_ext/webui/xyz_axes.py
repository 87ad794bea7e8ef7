"""The "[CapHuman] …" axes of the webui's X/Y/Z plot: each cell's value goes into `p.caphuman_overrides`, which the
job applies to every enabled unit (lifecycle.job.enabled_units)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from ..unit.params import PASSES, check_passes

# (axis label, unit field, cast of the cell's text)
NUMBER_AXES: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("Strength", "strength", float), ("Start", "start", float), ("End", "end", float),
    ("Pose-only steps", "pose_only", float), ("Yaw", "yaw", float), ("Pitch", "pitch", float),
    ("Roll", "roll", float), ("Modes", "modes", str))


def setter(name: str, cast: Callable[[Any], Any] = float) -> Callable:
    """The axis's `apply(p, x, xs)`: `modes` cells are "position+pose"."""
    def apply(p, x, xs) -> None:
        overrides = getattr(p, "caphuman_overrides", {})
        overrides[name] = cast(x) if name != "modes" else tuple(m for m in str(x).split("+") if m)
        p.caphuman_overrides = overrides
    return apply


def xyz_module(scripts_data: Iterable) -> ModuleType | None:
    """The X/Y/Z plot script's module, None when the webui has none."""
    return next((s.module for s in scripts_data if s.script_class.__module__ == "xyz_grid.py"), None)


def register_axes(scripts_data: Iterable) -> None:
    """`on_before_ui`: add the axes to the X/Y/Z plot."""
    xyz = xyz_module(scripts_data)
    if xyz is None:
        return
    for label, name, cast in NUMBER_AXES:
        xyz.axis_options.append(xyz.AxisOption(f"[CapHuman] {label}", cast, setter(name, cast)))
    xyz.axis_options.append(xyz.AxisOption("[CapHuman] Act in", str, setter("passes", check_passes),
                                           choices=lambda: list(PASSES)))
    xyz.axis_options.append(xyz.AxisOption("[CapHuman] Refine denoise", float, setter("refine_denoise", float)))
