"""The host-neutral lifecycle of one job: validate, prepare, wrap sampling, frames, step windows, errors, infotext, end.

Call order (A1111 modules/processing.py; Forge keeps it): `process` → per batch [`p.sample` →
(`process_before_every_sampling` → sampler, with the `cfg_denoiser` callback every model evaluation) → hires:
(`process_before_every_sampling` → sampler)] → `post_sample` → … → `postprocess`. The webui swallows exceptions from
every script callback, so an error is stored on the Generation and raised from `p.sample` (wrapped here) or, through
the host, from the UNet's next call. A `Host` (lifecycle/host.py) says which model is sampled and attaches to it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..compatibility import IncompatibleUNetError, check_compatible
from ..graphs import is_out_of_memory
from ..unit.infotext import NOTE_KEY, infotext_key, to_infotext
from ..unit.params import ActIn, DetailPass, UnitParams, UnitValidationError, units_from_args
from .detail import DETAIL_KEY, describe_details, detail_render
from .generation import CapHumanError, Generation, PreparedUnit
from .geometry import Frame, crop_frame, full_frame, hires_frame
from .host import Host
from .refine import ATTRIBUTE as REFINE_ATTRIBUTE
from .refine import RefinePlan, refine_plans

log = logging.getLogger(__name__)
ATTRIBUTE = "caphuman_generation"
LATENT_SCALE = 8
MODEL_FAMILIES = (("is_sdxl", "SDXL"), ("is_sd2", "SD2"), ("is_sd3", "SD3"), ("is_ssd", "SSD-1B"),
                  ("is_flux", "Flux"))


@dataclass
class ActiveJob:
    """A CapHuman job between `start` and `end`, which detail passes of other extensions may run inside."""

    p: object
    generation: Generation
    task: object  # the host's token of the task (UI click, API call) the job belongs to
    overrides: dict
    sampled: bool = False  # a sampling completed: from here on, a job started inside it is a detail pass
    details: dict[int, str] = field(default_factory=dict)  # unit position -> what it did in detail passes


_ACTIVE: list[ActiveJob] = []


def outer_job(p, task) -> ActiveJob | None:
    """The job that `p` runs inside (a detail pass of another extension), None for a job of its own. Jobs left
    active by a task that failed are dropped here, when a job of another task starts."""
    _ACTIVE[:] = [job for job in _ACTIVE if job.task == task and not job.generation.closed]
    return next((job for job in reversed(_ACTIVE) if job.p is not p and job.sampled), None)


def copy_of_a_running_job(p) -> bool:
    """`p` is a shallow copy of a running CapHuman job: it carries that job's generation but is not its `p`.
    ADetailer's `postprocess_image` calls every script's `postprocess` on such a copy before its detail pass (to
    undo ControlNet's hijack) and `before_process` + `process` on another after it (to set scripts up for the
    next image); neither is a job of CapHuman's, and neither may end or replace the running one."""
    generation = generation_of(p)
    return generation is not None and any(job.generation is generation and job.p is not p for job in _ACTIVE)


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


class JobServices(Protocol):
    """What a job needs of the process-wide services (`caphuman_ext.services.Services` in the webui)."""

    offload: bool  # move the job's models off the GPU after use

    def prepare(self, unit: UnitParams, position: int) -> PreparedUnit: ...

    def render(self, unit: UnitParams, width: int, height: int) -> torch.Tensor: ...

    def describe(self, unit: UnitParams) -> str: ...


@dataclass
class PlainServices:
    """JobServices from plain functions (tests, benchmarks, hosts without the webui's services)."""

    prepare: Callable[[UnitParams, int], PreparedUnit]
    render: Callable[[UnitParams, int, int], torch.Tensor]
    offload: bool = False
    describe: Callable[[UnitParams], str] = to_infotext


# the callbacks ------------------------------------------------------------------------------------------------------
def start(p, args: Sequence, host: Host, services: JobServices, task: object = None) -> Generation | None:
    """`process`: validate and prepare the enabled units with `services`; any error is kept for `p.sample` to raise.
    `services.describe(unit)` is a unit's infotext, written once the unit has acted. The model is checked when
    sampling starts (`before_sampling`): at `process` the webui may still hold the previous job's refiner.

    `task`: the host's token of the task the job belongs to. A job started in the same task inside a CapHuman job
    that has sampled is a detail pass of another extension (lifecycle/detail.py): its units act per their
    `detail_passes`, with the outer job's X/Y/Z overrides, and what they did goes into the outer job's infotext.
    A face refine pass (`p.caphuman_refine`, a RefinePlan) runs that plan's unit only, in its every pass, with the
    first pass's head cut to the crop and no pose-only steps. A copy of a running job (`copy_of_a_running_job`) is
    left as it is: None."""
    if copy_of_a_running_job(p):
        return None
    end(p, host)
    render, describe = services.render, services.describe
    outer = outer_job(p, task)
    refine: RefinePlan | None = getattr(p, REFINE_ATTRIBUTE, None)
    overrides = getattr(p, "caphuman_overrides", {}) if outer is None else outer.overrides
    try:
        units = enabled_units(args, overrides)
    except UnitValidationError as error:
        generation = Generation.failed(message(error))
    else:
        if refine is not None:
            # every pass of it, the identity from its first step (pose-only steps shape a composition; a refine
            # keeps the picture's and exists to carry the identity)
            units = [(position, dataclasses.replace(unit, passes=ActIn.BOTH.value, pose_only=0.0)) for position, unit in units
                     if position == refine.position]
        elif outer is not None:
            units = [(position, unit) for position, unit in units if unit.detail_passes != DetailPass.OFF]
            render = detail_render(render, lambda: getattr(p, "mask_for_overlay", None))
        if not units:
            return None
        try:
            prepared = [services.prepare(unit, position) for position, unit in units]
        except Exception as error:  # noqa: BLE001 - any failure stops this generation with a readable message
            generation = Generation.failed(message(error))
        else:
            generation = Generation(prepared, render, offload=services.offload)
    setattr(p, ATTRIBUTE, generation)
    active = None
    if outer is None and refine is None:
        active = ActiveJob(p, generation, task, dict(overrides))
        _ACTIVE.append(active)
    _wrap_sample(p, generation, host, describe, active, outer if refine is None else None)
    return generation


def refine_passes(p, picture_size: tuple[int, int]) -> list[RefinePlan]:
    """The face refine passes for one picture of the job `p`: its units with `refine` on that acted, whose head is
    in the picture; none for a job inside another (a detail pass, a refine pass: no recursion) or a failed one."""
    generation = generation_of(p)
    if generation is None or generation.error is not None or not any(job.p is p for job in _ACTIVE):
        return []
    units = [(unit.position, unit.params) for unit, acted in zip(generation.units, generation.acted(), strict=True)
             if acted]
    return refine_plans(units, picture_size, generation.render)


def _wrap_sample(p, generation: Generation, host: Host, describe: Callable[[UnitParams], str],
                 active: ActiveJob | None = None, outer: ActiveJob | None = None) -> None:
    """Raise a stored error, or refuse a model CapFace cannot feed, before sampling starts; detach when `p.sample`
    ends, however it ends; write each unit's infotext only once it has acted, and why CapHuman stopped early if it
    did. A job's completed sampling opens it to detail passes (`active`); a detail pass records what its units did
    in the outer job's infotext."""
    original = p.sample

    def sample(*args, **kwargs):
        generation.raise_if_failed()
        if generation.units:  # the batch's model is loaded now (at `process` it may still be the last refiner)
            problem = compatibility_problem(host, host.sampled_model(p), generation.units, "the loaded model")
            if problem is not None:
                generation.fail(problem)
                raise CapHumanError(problem)
        try:
            samples = original(*args, **kwargs)
            if active is not None:
                active.sampled = True
            return samples
        except BaseException as error:
            if is_out_of_memory(error):  # the card is short: what CapHuman keeps goes before the webui's retry
                generation.graphs.drop("out of memory in sampling")
            raise
        finally:
            host.detach(generation)
            generation.end_sampling()
            for unit, acted in zip(generation.units, generation.acted(), strict=True):
                if acted and unit.position not in generation.described:  # once per job (X/Y/Z cells share the dict)
                    generation.described.add(unit.position)
                    p.extra_generation_params[infotext_key(unit.position)] = describe(unit.params)
                if acted and outer is not None:
                    outer.details[unit.position] = unit.params.detail_passes
                    outer.p.extra_generation_params[DETAIL_KEY] = describe_details(outer.details)
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
    """`postprocess` (and the start of the next job on the same `p`): nothing of this job stays. A copy of a running
    job ends nothing."""
    if copy_of_a_running_job(p):
        return
    generation = generation_of(p)
    _ACTIVE[:] = [job for job in _ACTIVE if job.p is not p]
    if generation is not None:
        generation.close()
        host.detach(generation, final=True)
        setattr(p, ATTRIBUTE, None)


__all__ = ["ATTRIBUTE", "ActiveJob", "CapHumanError", "JobServices", "PlainServices", "before_sampling",
           "compatibility_problem", "copy_of_a_running_job", "end", "generation_of", "is_hires_pass", "message",
           "on_step", "outer_job", "pass_frame", "refine_passes", "start", "step_progress"]
