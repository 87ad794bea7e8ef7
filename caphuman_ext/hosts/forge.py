"""Forge adapter (Forge Classic / reForge: `ldm_patched`; Forge Neo / Forge 2: `backend`): the residual engine as a
link of Forge's ControlNet chain on a clone of `p.sd_model.forge_objects.unet`.

Forge samples through `forge_objects.unet` (a `UnetPatcher`) and resets `forge_objects` from pristine copies before
every sampling pass, so nothing is ever removed: attaching clones the UnetPatcher, links a `CapHumanControl` into its
`controlnet_linked_list` and assigns the clone back. Forge's sampler (`calc_cond_uncond_batch`) calls the chain's
`get_control(x_noisy, sigma, cond, chunks)` once per UNet call, with the batch laid out as `chunks` copies of the
images (one per cond or uncond entry), and the UNet adds `control['middle']` after its middle block and pops
`control['output']` (deepest first) onto the skips. The lifecycle itself is `caphuman_ext.lifecycle.job`.

Chunks of one call are the same latent: Forge crops a chunk's latent only for an area condition, and a cropped latent
has another size, which the engine refuses (`CapFaceControl.check_latent`). So rows map to images by position alone
(`RowPlan.chunks`), with no look at the data (no host sync).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import weakref
from collections.abc import Sequence

import torch
from torch import nn

from ..engine import Pending
from ..graphs import version_of
from ..lifecycle.generation import CapHumanError, Generation
from ..lifecycle.job import message
from ..rows import RowPlan

log = logging.getLogger(__name__)
Control = dict[str, list[torch.Tensor | None]]
MIDDLE = ("middle", 0)  # transformer_options["block"] while Forge's UNet runs its middle block


def detected() -> bool:
    """Whether this webui is one of the Forge family (they all ship the `modules_forge` package)."""
    try:
        return importlib.util.find_spec("modules_forge") is not None
    except (ImportError, ValueError):
        return False


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

    `get_control(x_noisy, sigma, cond, chunks)` returns the previous links' control plus the engine's residuals for
    the UNet input Forge will compute from (`calculate_input(sigma, x)`, `timestep(sigma)`), or raises the
    generation's error (Forge does not swallow what sampling raises).

    On CUDA the engine computes on a side stream. When this link is the whole chain (nobody reads its tensors before
    the UNet does) and Forge's UNet runs block modifiers, the UNet's stream waits for it just before the middle block, so
    CapFace overlaps the input blocks as in A1111; otherwise it waits when `get_control` returns.
    """

    def __init__(self, generation: Generation, model_sampling=None, unet_dtype: torch.dtype | None = None,
                 patchers: Sequence = ()) -> None:
        self.generation = generation
        self.model_sampling = model_sampling
        self.unet_dtype = unet_dtype  # not `dtype`: Forge's apply_model casts every keyword with a dtype (this too)
        self.patchers = list(patchers)
        self.previous_controlnet = None
        self.transformer_options: dict = {}
        self.heads_chain = False  # set by the adapter each step from the chain Forge samples
        self._modifier_runs = False  # Forge's UNet called `wait_before_middle` at least once
        self._waiting: Pending | None = None
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
        self._waiting = None
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

    def wait_before_middle(self, h: torch.Tensor, flag: str, transformer_options: dict) -> torch.Tensor:
        """A Forge block modifier: the UNet's stream waits for the side-stream residuals before its middle block."""
        if flag == "before" and transformer_options.get("block") == MIDDLE:
            self._modifier_runs = True
            if self._waiting is not None:
                self._waiting.wait()
                self._waiting = None
        return h

    def get_control(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict, batched_number: int,
                    *transformer_options: dict) -> Control | None:
        """Forge / Forge Neo call it with 4 arguments; reForge adds `transformer_options`, passed down the chain."""
        previous = None
        if self.previous_controlnet is not None:
            previous = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, *transformer_options)
        generation = self.generation
        if generation.closed:  # a clone kept past its job (Forge resets forge_objects, others may not)
            return previous
        generation.raise_if_failed()
        if transformer_options:
            self.transformer_options = transformer_options[0]
        if self._waiting is not None:  # the UNet did not run the modifier for the last call: never defer again
            self._waiting.wait()
            self._waiting = None
            self._modifier_runs = False
        sampling = self.model_sampling
        if sampling is None:
            raise CapHumanError("CapHuman: Forge did not give the control its model (pre_run was not called)")
        try:
            rows = x_noisy.shape[0]
            sources = RowPlan.chunks(rows // batched_number).take(rows) if 0 < batched_number <= rows else None
            # the UNet's input and timesteps as Forge's apply_model makes them, made inside the captured pass
            pending = generation.engine.compute(x_noisy, t, self.unet_dtype or x_noisy.dtype, sources,
                                                prologue=_UNetInput(sampling), prologue_key=sampling_key(sampling))
        except CapHumanError:
            raise
        except Exception as error:  # noqa: BLE001 - shown to the user instead of a stack trace from inside Forge
            generation.fail(message(error))
            raise CapHumanError(generation.error) from error
        if pending is None:
            return previous
        if self.heads_chain and previous is None and self._modifier_runs and pending.ready is not None:
            self._waiting = pending
        else:
            pending.wait()
        pending.delivered()
        return merge_controls(as_control(pending.residuals), previous)


class _UNetInput:
    """(noisy latent, sigma) -> (UNet input, timesteps) as Forge's `apply_model` computes them."""

    def __init__(self, sampling) -> None:
        self.sampling = sampling

    def __call__(self, x_noisy: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sampling.calculate_input(sigma, x_noisy), self.sampling.timestep(sigma).float()


def sampling_key(sampling) -> tuple | None:
    """What a captured `_UNetInput(sampling)` has baked in: the object (held, so that its id is never reused while
    a graph keeps it) and each of its tensors' address, dtype, shape and version, and its plain values. None when
    something cannot be vouched for (an attribute of another kind, a tensor without a version counter): then the
    input is computed outside the graph, as Forge does."""
    attributes = {k: v for k, v in vars(sampling).items() if not k.startswith("_")}
    if isinstance(sampling, nn.Module):
        attributes.update(sampling.named_buffers())
        attributes.update(sampling.named_parameters())
    parts = []
    for name, value in sorted(attributes.items()):
        if isinstance(value, torch.Tensor):
            version = version_of(value)
            if not isinstance(version, int):
                return None
            parts.append((name, value.data_ptr(), value.device, value.dtype, tuple(value.shape), version))
        elif value is None or isinstance(value, (bool, int, float, str)):
            parts.append((name, value))
        else:
            return None
    return (sampling, tuple(parts))


class _FailingControl(CapHumanControl):
    """The link that carries an error into Forge's sampling (raised from its first `get_control`)."""

    def get_control(self, *args, **kwargs) -> Control | None:
        self.generation.raise_if_failed()
        return super().get_control(*args, **kwargs)


def _normal_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A copy outside inference mode when `tensor` was made in it (Forge renders and samples under
    `torch.inference_mode()`; the control tracks its hint's version counter, which inference tensors lack)."""
    if not tensor.is_inference():
        return tensor
    with torch.inference_mode(False):
        return tensor.clone()


def _patcher_class() -> type | None:
    """Forge's `ModelPatcher` (Neo / Forge 2: `backend.patcher.base`; Classic / reForge: `ldm_patched`)."""
    for module in ("backend.patcher.base", "ldm_patched.modules.model_patcher"):
        try:
            return importlib.import_module(module).ModelPatcher
        except (ImportError, AttributeError):
            continue
    return None


class ManagedCapFace(nn.Module):
    """What Forge's memory management holds: a container, since its ModelPatchers set attributes of their own on the
    module they manage (reForge: `model.device = ...`, which CapFace's read-only `device` refuses)."""

    def __init__(self, capface: nn.Module) -> None:
        super().__init__()
        self.capface = capface


_PATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _patchers(generation: Generation, unet_patcher) -> list:
    """One memory-managed patcher per CapFace, made once per generation; the control's `get_models()` hands them to
    Forge, which loads them with the UNet and unloads them when it needs the memory (as its own ControlNets)."""
    if generation not in _PATCHERS:
        make = _patcher_class()
        capfaces = list({id(unit.capface): unit.capface for unit in generation.units}.values())
        try:
            _PATCHERS[generation] = [] if make is None else [
                make(ManagedCapFace(capface), load_device=unet_patcher.load_device,
                     offload_device=unet_patcher.offload_device)
                for capface in capfaces]
        except Exception:  # noqa: BLE001 - without them the engine moves CapFace to the UNet's device itself
            log.warning("CapHuman: Forge's memory management did not take CapFace", exc_info=True)
            _PATCHERS[generation] = []
    return _PATCHERS[generation]


def _chain(unet_patcher) -> list:
    found, pointer = [], getattr(unet_patcher, "controlnet_linked_list", None)
    while pointer is not None:
        found.append(pointer)
        pointer = pointer.previous_controlnet
    return found


def _ours(generation: Generation, model) -> CapHumanControl | None:
    for link in _chain(model.forge_objects.unet):
        if isinstance(link, CapHumanControl) and link.generation is generation:
            return link
    return None


class ForgeHost:
    """`lifecycle.host.Host` for the Forge family."""

    name = "Forge"

    def sampled_model(self, p, denoiser=None):
        """The denoiser's model (it follows a refiner switch), else `p.sd_model`."""
        inner = getattr(getattr(denoiser, "inner_model", None), "inner_model", None)
        return inner if getattr(inner, "forge_objects", None) is not None else p.sd_model

    def unet(self, model) -> nn.Module:
        return model.forge_objects.unet.model.diffusion_model

    def attached(self, generation: Generation, model) -> bool:
        control = _ours(generation, model)
        if control is not None:
            control.heads_chain = model.forge_objects.unet.controlnet_linked_list is control
        return control is not None and not isinstance(control, _FailingControl)

    def _link(self, model, control: CapHumanControl) -> None:
        clone = model.forge_objects.unet.clone()
        clone.add_patched_controlnet(control)
        add_modifier = getattr(clone, "add_block_modifier", None)
        if callable(add_modifier):
            add_modifier(control.wait_before_middle)
        model.forge_objects.unet = clone

    def attach(self, generation: Generation, model) -> None:
        if self.attached(generation, model):
            return
        unet_patcher = model.forge_objects.unet
        self._link(model, CapHumanControl(generation, _model_sampling(unet_patcher.model), _unet_dtype(unet_patcher),
                                          _patchers(generation, unet_patcher)))

    def detach(self, generation: Generation, final: bool = False) -> None:
        """Nothing to remove: Forge resets `forge_objects` before every pass; a kept clone checks `closed`."""

    def fail(self, generation: Generation, model) -> None:
        if not any(isinstance(link, _FailingControl) and link.generation is generation
                   for link in _chain(model.forge_objects.unet)):
            self._link(model, _FailingControl(generation, _model_sampling(model.forge_objects.unet.model)))

    def step_rows(self, params) -> RowPlan | None:
        """None: each Forge call says its own layout (`chunks`), read in `get_control` as a `RowPlan.chunks`.
        (Calls of one step are not shared: Forge splits a step into several calls only when memory is short.)"""
        return None

    def adopt(self, hint: torch.Tensor) -> torch.Tensor:
        return _normal_tensor(hint)

    def low_vram(self) -> bool:
        from modules import shared

        options = getattr(shared, "cmd_opts", None)
        return any(bool(getattr(options, flag, False)) for flag in ("lowvram", "medvram", "always_low_vram",
                                                                     "always_no_vram"))


HOST = ForgeHost()

__all__ = ["HOST", "CapHumanControl", "ForgeHost", "ManagedCapFace", "as_control", "detected", "merge_controls"]
