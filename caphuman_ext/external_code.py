"""CapHuman's Python API for other extensions (as sd-webui-controlnet's `external_code`): read and set the CapHuman
units of a job, and find each unit's head in a picture without a face detector (from the head the unit renders).

    from caphuman_ext import external_code as caphuman   # the extension's folder is on sys.path in the webui

    if caphuman.get_api_version() >= 1:
        units = caphuman.get_enabled_units(p)            # UnitParams, X/Y/Z overrides applied
        box = caphuman.head_box(units[0], *image.size)   # (left, top, right, bottom) in pixels, or None
        mask = caphuman.head_mask(units[0], *image.size, as_pil=True)

Versioning: `get_api_version()` grows when something is added; a name documented here keeps its meaning within a
major version. Nothing here imports the webui: `p` is any processing object with `scripts` (the webui's script
runner) and `script_args`; the head functions use the renderer the CapHuman script registers when the webui loads it
(`register_renderer`), or the `render` you pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .lifecycle.geometry import Frame, crop_frame
from .lifecycle.heads import Box, RenderCanvas
from .lifecycle.heads import head_box as _head_box
from .lifecycle.heads import head_mask as _head_mask
from .unit.params import FIELD_ORDER, UnitParams, unit_from_dict, units_from_args

API_VERSION = 1
SCRIPT_TITLE = "CapHuman"
SCRIPT_FILE = "caphuman_unit"  # scripts/caphuman_unit.py
OVERRIDES = "caphuman_overrides"  # X/Y/Z plot values for the job's units: {field: value}

_RENDERER: RenderCanvas | None = None


def get_api_version() -> int:
    """1: units of a job (get/set), head box and head mask of a unit."""
    return API_VERSION


def register_renderer(render: RenderCanvas | None) -> None:
    """Set the default head renderer: `render(unit, width, height) -> hint (1, 9, height, width)` (the script
    registers its UnitBuilder's)."""
    global _RENDERER
    _RENDERER = render


# the units of a job ---------------------------------------------------------------------------------------------------
def _is_caphuman(script) -> bool:
    filename = getattr(script, "filename", None)
    if filename and Path(str(filename)).stem == SCRIPT_FILE:
        return True
    title = getattr(script, "title", None)
    try:
        return callable(title) and title() == SCRIPT_TITLE
    except Exception:  # noqa: BLE001 - another script's title() failing is not ours to report
        return False


def find_script(p):
    """The CapHuman script among the job's always-on scripts, or None."""
    runner = getattr(p, "scripts", None)
    return next((s for s in getattr(runner, "alwayson_scripts", None) or [] if _is_caphuman(s)), None)


def _arg_range(p) -> tuple[int, int]:
    script = find_script(p)
    if script is None:
        raise LookupError("CapHuman is not among this job's scripts")
    start, end = int(getattr(script, "args_from", 0) or 0), int(getattr(script, "args_to", 0) or 0)
    if end <= start:
        raise LookupError("the CapHuman script has no arguments in this job")
    return start, end


def get_units(p) -> list[UnitParams]:
    """Every CapHuman unit of the job `p` in tab order (disabled ones included, as `enabled=False`), validated,
    with the job's X/Y/Z overrides applied to the enabled ones. Raises LookupError when CapHuman is not in the job,
    `UnitValidationError` naming the field of a wrong unit."""
    start, end = _arg_range(p)
    units = units_from_args(tuple(p.script_args[start:end]))
    overrides = getattr(p, OVERRIDES, None) or {}
    for unit in units:
        if unit.enabled:
            for name, value in overrides.items():
                setattr(unit, name, value)
    return units


def get_enabled_units(p) -> list[UnitParams]:
    return [unit for unit in get_units(p) if unit.enabled]


def unit_to_dict(unit: UnitParams) -> dict:
    """A unit as the dict the API and `set_units` take (images stay PIL images)."""
    return {name: getattr(unit, name) for name in FIELD_ORDER}


def set_units(p, units: Sequence[UnitParams | dict]) -> None:
    """Replace the job's CapHuman units by `units` (UnitParams or API dicts, validated here), in tab order; call it
    before the job runs (`process` of a script ordered before CapHuman at the latest). Raises LookupError when
    CapHuman is not in the job, ValueError when the units do not fit its arguments."""
    start, end = _arg_range(p)
    values = [unit_to_dict(unit) if isinstance(unit, UnitParams) else dict(unit) for unit in units]
    checked = [unit_to_dict(unit_from_dict(value)) for value in values]
    if len(checked) > end - start:
        raise ValueError(f"{len(checked)} units do not fit the {end - start} CapHuman arguments of this job")
    # API form: one dict per unit at the start of the range; a non-dict ends the list (see units_from_args)
    filler = [None] * (end - start - len(checked))
    args = list(p.script_args)
    args[start:end] = checked + filler
    p.script_args = type(p.script_args)(args) if isinstance(p.script_args, tuple) else args


def replace_unit(p, index: int, unit: UnitParams | dict) -> None:
    """Set the unit in tab `index` (0-based), keeping the others."""
    units: list = [unit_to_dict(u) for u in get_units_raw(p)]
    while len(units) <= index:
        units.append({"enabled": False})
    units[index] = unit
    set_units(p, units)


def get_units_raw(p) -> list[UnitParams]:
    """The job's units without X/Y/Z overrides (what `set_units` writes back)."""
    start, end = _arg_range(p)
    return units_from_args(tuple(p.script_args[start:end]))


# where a unit's head is ------------------------------------------------------------------------------------------------
def _renderer(render: RenderCanvas | None) -> RenderCanvas:
    found = render or _RENDERER
    if found is None:
        raise RuntimeError("no CapHuman head renderer: pass `render=` or load the CapHuman script")
    return found


def _checked(unit: UnitParams | dict) -> UnitParams:
    return unit if isinstance(unit, UnitParams) else unit_from_dict(dict(unit))


def head_mask(unit: UnitParams | dict, width: int, height: int, frame: Frame | None = None,
              render: RenderCanvas | None = None, as_pil: bool = False):
    """The unit's head in a `width`×`height` picture: (1, 1, height, width) float tensor, 1 on the head, 0 off it
    (`as_pil`: an "L" image, 255 on the head). `frame`: which part of the head's canvas the picture shows (default:
    the whole canvas at that size; `crop_frame(picture_size, (x, y, w, h))` for a region of a bigger picture, as an
    inpaint "only masked" pass samples it)."""
    mask = _head_mask(_renderer(render), _checked(unit), (int(width), int(height)), frame)
    if not as_pil:
        return mask
    from PIL import Image

    return Image.fromarray((mask[0, 0] * 255).round().to(torch.uint8).cpu().numpy(), "L")


def head_box(unit: UnitParams | dict, width: int, height: int, frame: Frame | None = None,
             render: RenderCanvas | None = None) -> Box | None:
    """(left, top, right, bottom) of the unit's head in a `width`×`height` picture (right, bottom exclusive), None
    when none of the head is in it; `frame` as for `head_mask`."""
    return _head_box(_renderer(render), _checked(unit), (int(width), int(height)), frame)


def with_fields(unit: UnitParams, **changes) -> UnitParams:
    """A copy of `unit` with fields changed and validated (e.g. `with_fields(unit, strength=0.8)`)."""
    return unit_from_dict({**unit_to_dict(dataclasses.replace(unit)), **changes})


Renderer = Callable[[UnitParams, int, int], torch.Tensor]

__all__ = ["API_VERSION", "Box", "Frame", "Renderer", "crop_frame", "find_script", "get_api_version",
           "get_enabled_units", "get_units", "get_units_raw", "head_box", "head_mask", "register_renderer",
           "replace_unit", "set_units", "unit_to_dict", "with_fields"]
