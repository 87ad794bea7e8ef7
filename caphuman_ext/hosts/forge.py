"""Forge adapter (Forge Classic / reForge: `ldm_patched`; Forge Neo / Forge 2: `backend`): CapHuman as a control in
Forge's ControlNet chain on a clone of `p.sd_model.forge_objects.unet`.

Forge samples through `forge_objects.unet` (a `UnetPatcher`) and resets `forge_objects` from pristine copies before
every sampling pass, so nothing is ever removed: `process_before_every_sampling` clones the UnetPatcher, links a
`CapHumanControl` into its `controlnet_linked_list` and assigns the clone back. Forge's sampler
(`calc_cond_uncond_batch`) calls the chain's `get_control(x_noisy, sigma, cond, chunks)` once per UNet call, with the
batch laid out as `chunks` copies of the images (one per cond or uncond entry, `transformer_options['cond_or_uncond']`),
and the UNet adds `control['middle']` after its middle block and pops `control['output']` (deepest first) onto the
skips. The A1111 callbacks `process`, `cfg_denoiser` and `p.sample` work as in A1111 (a Generation per `p`, step
windows from the denoiser's step count, errors raised from `p.sample` or from the control's next call).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import weakref
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import torch
from torch import nn

from ..control import CapFaceControl
from ..hook import check_compatible, compute_dtype
from ..lifecycle.generation import CapHumanError, Generation, PreparedUnit
from ..lifecycle.geometry import Frame
from ..unit.infotext import to_infotext
from ..unit.params import UnitParams
from . import a1111
from .a1111 import ATTRIBUTE, generation_of, low_vram, pass_frame, step_progress  # noqa: F401 - the adapter surface

log = logging.getLogger(__name__)
Control = dict[str, list[torch.Tensor | None]]
_ENDED: weakref.WeakSet = weakref.WeakSet()  # generations whose job has ended: their controls add nothing


def detected() -> bool:
    """Whether this webui is one of the Forge family (they all ship the `modules_forge` package)."""
    try:
        return importlib.util.find_spec("modules_forge") is not None
    except (ImportError, ValueError):
        return False


def ldm_blocks() -> tuple:
    """(openaimodel, attention, util) for building CapFace where the webui has no `ldm` package (Forge Neo / Forge 2:
    `backend.nn.unet` has ldm's blocks under ldm's names and constructor signatures)."""
    from backend.nn import unet

    util = SimpleNamespace(conv_nd=unet.conv_nd, linear=nn.Linear)
    return unet, unet, util


# residuals ---------------------------------------------------------------------------------------------------------
def row_images(rows: int, chunks: int) -> torch.Tensor:
    """Image index of each row of a Forge UNet batch: `chunks` (cond or uncond entries) × the images, in order."""
    if chunks <= 0 or rows % chunks:
        raise ValueError(f"a UNet batch of {rows} rows is not {chunks} equal chunks")
    return torch.arange(rows) % (rows // chunks)


def _chunks_identical(x: torch.Tensor, timesteps: torch.Tensor, chunks: int) -> bool:
    """Whether every chunk has the same latent and timesteps (always so without area prompts)."""
    if chunks <= 1:
        return False
    xs, ts = x.chunk(chunks), timesteps.chunk(chunks)
    return all(torch.equal(xs[0], other) for other in xs[1:]) and all(torch.equal(ts[0], t) for t in ts[1:])


def capface_residuals(controls: Sequence[CapFaceControl], x: torch.Tensor, timesteps: torch.Tensor,
                      chunks: int = 1, dtype: torch.dtype | None = None) -> list[torch.Tensor] | None:
    """The 13 summed residuals of the active controls for UNet input `x` (B, C, h, w) at `timesteps` (B,) — both as the
    UNet receives them — masked and scaled per control; None when no control acts. Rows are `chunks` copies of the
    images (cond, uncond ...); identical chunks share one CapFace pass, as the A1111 hook's cond and uncond rows do.
    dtype: the UNet's compute dtype (default: x's)."""
    active = [control for control in controls if control.enabled]
    if not active:
        return None
    images = row_images(x.shape[0], chunks).to(x.device)
    dtype = compute_dtype(dtype or x.dtype, x.device)
    share = _chunks_identical(x, timesteps, chunks)
    x_rows = x.chunk(chunks)[0] if share else x
    t_rows = timesteps.chunk(chunks)[0] if share else timesteps
    rows = images[: x_rows.shape[0]]
    total: list[torch.Tensor] | None = None
    with torch.no_grad():
        for control in active:
            if control.capface.device != x.device or control.capface.dtype != dtype:
                control.capface.to(device=x.device, dtype=dtype)
            control.check_latent(x)
            outs = control.residuals(x_rows, t_rows, rows)
            total = outs if total is None else [a + b for a, b in zip(total, outs, strict=True)]
    if share:
        total = [torch.cat([r] * chunks) for r in total]
    return total


def as_control(residuals: Sequence[torch.Tensor]) -> Control:
    """Forge's control dict: `middle` after the middle block; `output` shallowest first (the UNet pops the deepest
    for its first output block), as Forge's own ControlNet `control_merge` lays out a ControlNet's 13 outputs."""
    return {"input": [], "middle": [residuals[-1]], "output": list(residuals[:-1])}


def merge_controls(ours: Control | None, previous: Control | None) -> Control | None:
    """Sum two control dicts entry by entry (a longer list keeps its extra entries), as Forge's `control_merge`."""
    if ours is None or previous is None:
        return ours if previous is None else previous
    merged: Control = {}
    for key in ("input", "middle", "output"):
        a, b = list(ours.get(key, [])), previous.get(key, [])
        for index, value in enumerate(b):
            if index >= len(a):
                a.append(value)
            elif value is not None:
                a[index] = value if a[index] is None else a[index] + value.to(a[index].dtype)
        merged[key] = a
    return merged


# the control Forge calls -------------------------------------------------------------------------------------------
def _model_sampling(model) -> object | None:
    """The model's sigma <-> timestep object: Forge Classic `model_sampling`, Forge Neo / 2 `predictor`."""
    return getattr(model, "predictor", None) or getattr(model, "model_sampling", None)


def _unet_dtype(unet_patcher) -> torch.dtype:
    model = unet_patcher.model
    cast = getattr(model, "manual_cast_dtype", None)
    if cast is not None:
        return cast
    get_dtype = getattr(model, "get_dtype", None)
    if callable(get_dtype):
        return get_dtype()
    return next(model.diffusion_model.parameters()).dtype


class CapHumanControl:
    """One link of Forge's ControlNet chain (the `ControlBase` interface): all of a generation's CapHuman units.

    `get_control(x_noisy, sigma, cond, chunks)` returns the previous links' control plus CapHuman's residuals for the
    UNet input Forge will compute from (`calculate_input(sigma, x)`, `timestep(sigma)`), or raises the generation's
    error (Forge does not swallow what sampling raises).
    """

    def __init__(self, generation: Generation, model_sampling=None, unet_dtype: torch.dtype | None = None,
                 patchers: Sequence = ()) -> None:
        self.generation = generation
        self.model_sampling = model_sampling
        self.unet_dtype = unet_dtype  # not `dtype`: Forge's apply_model casts every keyword with a dtype (this too)
        self.patchers = list(patchers)
        self.previous_controlnet = None
        self.transformer_options: dict = {}
        # ControlBase fields some Forge code reads
        self.cond_hint_original = None
        self.cond_hint = None
        self.strength = 1.0
        self.timestep_percent_range = (0.0, 1.0)
        self.timestep_range = None
        self.global_average_pooling = False
        self.extra_hooks = None  # reForge reads it from every link

    def set_previous_controlnet(self, controlnet) -> CapHumanControl:
        self.previous_controlnet = controlnet
        return self

    def pre_run(self, model, percent_to_timestep_function) -> None:
        self.model_sampling = _model_sampling(model) or self.model_sampling
        if self.previous_controlnet is not None:
            self.previous_controlnet.pre_run(model, percent_to_timestep_function)

    def cleanup(self) -> None:
        if self.previous_controlnet is not None:
            self.previous_controlnet.cleanup()

    def get_models(self) -> list:
        previous = self.previous_controlnet.get_models() if self.previous_controlnet is not None else []
        return previous + self.patchers

    def get_extra_hooks(self) -> list:
        """reForge (ComfyUI hooks): this link has none; the previous links' hooks."""
        previous = self.previous_controlnet
        return previous.get_extra_hooks() if previous is not None and hasattr(previous, "get_extra_hooks") else []

    def inference_memory_requirements(self, dtype) -> int:
        if self.previous_controlnet is not None:
            return self.previous_controlnet.inference_memory_requirements(dtype)
        return 0

    def copy(self) -> CapHumanControl:
        return CapHumanControl(self.generation, self.model_sampling, self.unet_dtype, self.patchers)

    def get_control(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict, batched_number: int,
                    *transformer_options: dict) -> Control | None:
        """Forge / Forge Neo call it with 4 arguments; reForge adds `transformer_options`, passed down the chain."""
        if self.generation in _ENDED:  # a clone kept past its job (Forge resets forge_objects, others may not)
            previous = self.previous_controlnet
            return None if previous is None else previous.get_control(x_noisy, t, cond, batched_number,
                                                                     *transformer_options)
        self.generation.raise_if_failed()
        if transformer_options:
            self.transformer_options = transformer_options[0]
        previous = None
        if self.previous_controlnet is not None:
            previous = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, *transformer_options)
        sampling = self.model_sampling
        if sampling is None:
            raise CapHumanError("CapHuman: Forge did not give the control its model (pre_run was not called)")
        x = sampling.calculate_input(t, x_noisy)
        timesteps = sampling.timestep(t).float()
        try:
            residuals = capface_residuals(self.generation.controls, x, timesteps, batched_number, self.unet_dtype)
        except CapHumanError:
            raise
        except Exception as error:  # noqa: BLE001 - shown to the user instead of a stack trace from inside Forge
            self.generation.fail(a1111._message(error))
            raise CapHumanError(self.generation.error) from error
        if residuals is None:
            return previous
        for control in self.generation.controls:
            if control.enabled:
                control.applied_calls += 1
        return merge_controls(as_control(residuals), previous)


# lifecycle ---------------------------------------------------------------------------------------------------------
def forge_model(p, denoiser=None):
    """The model object Forge samples now: the denoiser's (it follows a refiner switch), else `p.sd_model`."""
    inner = getattr(getattr(denoiser, "inner_model", None), "inner_model", None)
    return inner if getattr(inner, "forge_objects", None) is not None else p.sd_model


def diffusion_model(unet_patcher) -> nn.Module:
    return unet_patcher.model.diffusion_model


def start(p, args: Sequence, prepare: Callable[[UnitParams, int], PreparedUnit], render: Callable,
          offload: bool, describe: Callable[[UnitParams], str] = to_infotext) -> Generation | None:
    """`process`: `a1111.start`, with the CapFaces checked against Forge's UNet."""
    end(p)
    return a1111.start(p, args, prepare, render, offload, describe, model_of=lambda p: p.sd_model,
                       unet_of=lambda model: diffusion_model(model.forge_objects.unet))


def _normal_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A copy outside inference mode when `tensor` was made in it (Forge renders and samples under
    `torch.inference_mode()`; the control tracks its hint's version counter, which inference tensors lack)."""
    if not tensor.is_inference():
        return tensor
    with torch.inference_mode(False):
        return tensor.clone()


def arm(generation: Generation, frame: Frame, latent_hw: tuple[int, int]) -> list[CapFaceControl]:
    """The generation's controls with this pass's hints (`Generation.arm`), copied out of Forge's inference mode."""
    return generation.arm(frame, latent_hw, adopt=_normal_tensor)


def _patcher_class() -> type | None:
    """Forge's `ModelPatcher` (Neo / Forge 2: `backend.patcher.base`; Classic / reForge: `ldm_patched`)."""
    for module in ("backend.patcher.base", "ldm_patched.modules.model_patcher"):
        try:
            return importlib.import_module(module).ModelPatcher
        except (ImportError, AttributeError):
            continue
    return None


_PATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ManagedCapFace(nn.Module):
    """What Forge's memory management holds: a container, since its ModelPatchers set attributes of their own on the
    module they manage (reForge: `model.device = ...`, which CapFace's read-only `device` refuses)."""

    def __init__(self, capface: nn.Module) -> None:
        super().__init__()
        self.capface = capface


def _patchers(generation: Generation, unet_patcher) -> list:
    """One memory-managed patcher per CapFace, made once per generation; the control's `get_models()` hands them to
    Forge, which loads them with the UNet and unloads them when it needs the memory (as its own ControlNets)."""
    if generation not in _PATCHERS:
        make = _patcher_class()
        try:
            _PATCHERS[generation] = [] if make is None else [
                make(ManagedCapFace(unit.capface), load_device=unet_patcher.load_device,
                     offload_device=unet_patcher.offload_device)
                for unit in generation.units]
        except Exception:  # noqa: BLE001 - without them the control moves CapFace to the UNet's device itself
            log.warning("CapHuman: Forge's memory management did not take CapFace", exc_info=True)
            _PATCHERS[generation] = []
    return _PATCHERS[generation]


def attach(generation: Generation, model) -> CapHumanControl:
    """Clone `model.forge_objects.unet`, link a CapHumanControl into it and assign the clone back."""
    unet_patcher = model.forge_objects.unet
    if generation.error is None:
        check_compatible(diffusion_model(unet_patcher), generation.controls)
    control = CapHumanControl(generation, _model_sampling(unet_patcher.model),
                              _unet_dtype(unet_patcher) if generation.error is None else None,
                              _patchers(generation, unet_patcher) if generation.error is None else ())
    clone = unet_patcher.clone()
    clone.add_patched_controlnet(control)
    model.forge_objects.unet = clone
    return control


def attached(generation: Generation, model) -> bool:
    """Whether the UNet `model` samples holds this generation's control."""
    pointer = getattr(model.forge_objects.unet, "controlnet_linked_list", None)
    while pointer is not None:
        if isinstance(pointer, CapHumanControl) and pointer.generation is generation:
            return True
        pointer = pointer.previous_controlnet
    return False


def _fail(generation: Generation, error: Exception, model) -> None:
    """Record the error; a control that raises it joins the chain (the webui swallows the callback's exception)."""
    generation.fail(a1111._message(error))
    try:
        if not attached(generation, model):
            attach(generation, model)
    except Exception:  # noqa: BLE001 - p.sample still raises it
        log.exception("CapHuman: could not attach the error")


def end(p) -> None:
    """`postprocess` (and the start of the next job on the same `p`): the job's controls stop acting, wherever a
    clone holding them is kept."""
    generation = generation_of(p)
    if generation is not None:
        _ENDED.add(generation)
    a1111.end(p)


def before_sampling(p, latent: torch.Tensor) -> None:
    """`process_before_every_sampling`: this pass's hints, a control on a clone of the UNet Forge samples."""
    generation = generation_of(p)
    if generation is None:
        return
    model = p.sd_model
    if generation.error is not None:
        _fail(generation, CapHumanError(generation.error), model)
        return
    try:
        latent_hw = tuple(latent.shape[-2:])
        arm(generation, pass_frame(p, latent_hw), latent_hw)
        attach(generation, model)
    except Exception as error:  # noqa: BLE001 - raised from sampling instead (the webui swallows it here)
        _fail(generation, error, model)


def on_cfg_denoiser(params) -> None:
    """Every step: the units' windows and pose-only phase; after a refiner switch, the control on the new UNet."""
    p = getattr(params.denoiser, "p", None)
    generation = generation_of(p)
    if generation is None or generation.error is not None or not generation.controls:
        return
    model = forge_model(p, params.denoiser)
    try:
        if not attached(generation, model):
            attach(generation, model)
        generation.step(step_progress(params), None)
    except Exception as error:  # noqa: BLE001 - raised from the control's next call instead
        _fail(generation, error, model)


__all__ = ["CapHumanControl", "CapHumanError", "as_control", "attach", "before_sampling", "capface_residuals",
           "detected", "end", "generation_of", "ldm_blocks", "low_vram", "merge_controls", "on_cfg_denoiser",
           "row_images", "start"]
