"""The host-neutral lifecycle of one job: validate, prepare, wrap sampling, frames, step windows, errors, infotext, end.

Call order (A1111 modules/processing.py; Forge keeps it): `process` → per batch [`p.sample` →
(`process_before_every_sampling` → sampler, with the `cfg_denoiser` callback every model evaluation) → hires:
(`process_before_every_sampling` → sampler)] → `post_sample` → … → `postprocess`. The webui swallows exceptions from
every script callback, so an error is stored on the Generation and raised from `p.sample` (wrapped here) or, through
the host, from the UNet's next call. A `Host` (lifecycle/host.py) says which model is sampled and attaches to it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from ..compatibility import IncompatibleUNetError, check_compatible
from ..unit.infotext import NOTE_KEY, infotext_key, to_infotext
from ..unit.params import UnitParams, UnitValidationError, units_from_args
from .generation import CapHumanError, Generation, PreparedUnit
from .geometry import Frame, crop_frame, full_frame, hires_frame
from .host import Host

log = logging.getLogger(__name__)
ATTRIBUTE = "caphuman_generation"
LATENT_SCALE = 8
MODEL_FAMILIES = (("is_sdxl", "SDXL"), ("is_sd2", "SD2"), ("is_sd3", "SD3"), ("is_ssd", "SSD-1B"),
                  ("is_flux", "Flux"))


def message(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text if text.startswith("CapHuman") else f"CapHuman: {text}"


def generation_of(p) -> Generation | None:
    return getattr(p, ATTRIBUTE, None)


def model_family(model) -> str | None:
    """The webui's own family flag of `model` when it is not SD1.x (an SD2 UNet has SD1.5's block widths, so
    shapes alone do not tell)."""
    for flag, family in MODEL_FAMILIES:
        if getattr(model, flag, False):
            return family
    return None


def compatibility_problem(host: Host, model, units: Sequence[PreparedUnit], role: str) -> str | None:
    """Why the units' CapFaces cannot feed the UNet of `model` (`role`: how to name it: "the loaded model",
    "the refiner", "the hires checkpoint"), None when they can."""
    family = model_family(model)
    if family is not None:
        return (f"CapHuman works with SD1.x checkpoints only (SD1.5 and its fine-tunes); {role} is {family}. "
                "Switch checkpoints or disable the CapHuman unit.")
    unet = host.unet(model)
    for unit in units:
        try:
            check_compatible(unet, [unit.capface])
        except IncompatibleUNetError as error:
            return f"CapHuman: {unit.model_name or 'the CapHuman file'}: {error}"
    return None


def enabled_units(args: Sequence, overrides: dict) -> list[tuple[int, UnitParams]]:
    """(position, unit) of every enabled unit, with X/Y/Z overrides applied."""
    units = []
    for position, unit in enumerate(units_from_args(args)):
        if not unit.enabled:
            continue
        for name, value in overrides.items():
            setattr(unit, name, value)
        units.append((position, unit))
    return units


def is_hires_pass(p) -> bool:
    return bool(getattr(p, "is_hr_pass", False))


def pass_frame(p, latent_hw: tuple[int, int]) -> Frame:
    """Where this sampling pass's latent sits in the picture the head is placed in."""
    if is_hires_pass(p) and getattr(p, "hr_upscale_to_x", 0):
        first = (p.height // LATENT_SCALE, p.width // LATENT_SCALE)
        upscaled = (p.hr_upscale_to_y // LATENT_SCALE, p.hr_upscale_to_x // LATENT_SCALE)
        return hires_frame(first, upscaled, latent_hw, (getattr(p, "truncate_x", 0), getattr(p, "truncate_y", 0)))
    paste_to = getattr(p, "paste_to", None)
    if paste_to and getattr(p, "inpaint_full_res", False):
        whole = getattr(p, "mask_for_overlay", None) or (p.init_images[0] if getattr(p, "init_images", None) else None)
        if whole is not None:
            return crop_frame(whole.size, paste_to)
    return full_frame(latent_hw)


def step_progress(params) -> float:
    """Fraction of this pass's model evaluations done (what the webui's own skip-early-CFG uses)."""
    denoiser = params.denoiser
    step, total = getattr(denoiser, "step", None), getattr(denoiser, "total_steps", None)
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        return step / total
    total = params.total_sampling_steps
    return params.sampling_step / total if total else 0.0


# the callbacks ------------------------------------------------------------------------------------------------------
def start(p, args: Sequence, host: Host, prepare: Callable[[UnitParams, int], PreparedUnit], render: Callable,
          offload: bool, describe: Callable[[UnitParams], str] = to_infotext) -> Generation | None:
    """`process`: validate and prepare the enabled units; any error is kept for `p.sample` to raise.
    `describe(unit)` is a unit's infotext, written once the unit has acted. The model is checked when sampling
    starts (`before_sampling`): at `process` the webui may still hold the previous job's refiner."""
    end(p, host)
    try:
        units = enabled_units(args, getattr(p, "caphuman_overrides", {}))
    except UnitValidationError as error:
        generation = Generation.failed(message(error))
    else:
        if not units:
            return None
        try:
            prepared = [prepare(unit, position) for position, unit in units]
        except Exception as error:  # noqa: BLE001 - any failure stops this generation with a readable message
            generation = Generation.failed(message(error))
        else:
            generation = Generation(prepared, render, offload=offload)
    setattr(p, ATTRIBUTE, generation)
    _wrap_sample(p, generation, host, describe)
    return generation


def _wrap_sample(p, generation: Generation, host: Host, describe: Callable[[UnitParams], str]) -> None:
    """Raise a stored error, or refuse a model CapFace cannot feed, before sampling starts; detach when `p.sample` ends, however it ends; write each unit's
    infotext only once it has acted, and why CapHuman stopped early if it did."""
    original = p.sample

    def sample(*args, **kwargs):
        generation.raise_if_failed()
        if generation.units:  # the batch's model is loaded now (at `process` it may still be the last refiner)
            problem = compatibility_problem(host, host.sampled_model(p), generation.units, "the loaded model")
            if problem is not None:
                generation.fail(problem)
                raise CapHumanError(problem)
        try:
            return original(*args, **kwargs)
        finally:
            host.detach(generation)
            generation.end_sampling()
            for unit, acted in zip(generation.units, generation.acted(), strict=True):
                if acted and unit.position not in generation.described:  # once per job (X/Y/Z cells share the dict)
                    generation.described.add(unit.position)
                    p.extra_generation_params[infotext_key(unit.position)] = describe(unit.params)
            if generation.stopped is not None:
                p.extra_generation_params[NOTE_KEY] = generation.stopped

    p.sample = sample


def _fail(generation: Generation, error: Exception, host: Host, model) -> None:
    generation.fail(message(error))
    try:
        host.fail(generation, model)
    except Exception:  # noqa: BLE001 - p.sample still raises it
        log.exception("CapHuman: could not make sampling raise the error")


def _stop(generation: Generation, host: Host, note: str) -> None:
    """The units end here; the picture sampled so far is kept (a refiner or hires checkpoint of another family)."""
    if generation.stopped is None:
        log.warning("%s", note)
    generation.stop(note)
    host.detach(generation)


def before_sampling(p, latent: torch.Tensor, host: Host) -> None:
    """`process_before_every_sampling`: this pass's hints, the engine attached to the UNet sampled now."""
    generation = generation_of(p)
    if generation is None:
        return
    model = host.sampled_model(p)
    if generation.error is not None:
        _fail(generation, CapHumanError(generation.error), host, model)
        return
    hires = is_hires_pass(p)
    try:
        if generation.stopped is not None:
            return
        if not host.attached(generation, model):
            role = "the hires checkpoint" if hires else "the loaded model"
            problem = compatibility_problem(host, model, generation.units, role)
            if problem is not None:
                if hires and any(generation.acted()):
                    _stop(generation, host, f"CapHuman ended before the hires pass: {problem}")
                    return
                raise CapHumanError(problem)
        latent_hw = tuple(latent.shape[-2:])
        generation.prepare_pass(pass_frame(p, latent_hw), latent_hw, hires, host.adopt)
        host.attach(generation, model)
    except Exception as error:  # noqa: BLE001 - raised from sampling instead (the webui swallows it here)
        _fail(generation, error, host, model)


def on_step(params, host: Host) -> None:
    """`cfg_denoiser` callback, every model evaluation: unit windows and pose-only phase, the row layout; after a
    refiner switch, the engine on the new UNet, or the units' end when CapFace cannot feed it."""
    p = getattr(params.denoiser, "p", None)
    generation = generation_of(p)
    if generation is None or generation.error is not None or not generation.controls or generation.stopped:
        return
    model = host.sampled_model(p, params.denoiser)
    try:
        if not host.attached(generation, model):
            problem = compatibility_problem(host, model, generation.units, "the refiner")
            if problem is not None:
                _stop(generation, host, f"CapHuman ended at the refiner switch: {problem}")
                return
            host.attach(generation, model)
        generation.step(step_progress(params), host.step_rows(params))
    except Exception as error:  # noqa: BLE001 - raised from the UNet's next call instead
        _fail(generation, error, host, model)


def end(p, host: Host) -> None:
    """`postprocess` (and the start of the next job on the same `p`): nothing of this job stays."""
    generation = generation_of(p)
    if generation is not None:
        generation.close()
        host.detach(generation, final=True)
        setattr(p, ATTRIBUTE, None)


__all__ = ["ATTRIBUTE", "CapHumanError", "before_sampling", "compatibility_problem", "end", "generation_of",
           "is_hires_pass", "message", "on_step", "pass_frame", "start", "step_progress"]
