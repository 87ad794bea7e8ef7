"""AUTOMATIC1111 v1.10 adapter: one `Generation` per processing object `p`, attached to the UNet being sampled.

Call order (modules/processing.py): `process` → per batch [`p.sample` → (`process_before_every_sampling` →
sampler, with `on_cfg_denoiser` each step) → hires: (`before_hr`, `process_before_every_sampling` → sampler)] →
`post_sample` → `postprocess_image` → … → `postprocess`. The webui swallows exceptions from every script callback,
so an error is stored on the Generation and raised from `p.sample` (wrapped here) or from the UNet's next call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from ..lifecycle.generation import CapHumanError, Generation, PreparedUnit
from ..lifecycle.geometry import Frame, crop_frame, full_frame, hires_frame
from ..lifecycle.rows import RowPlan, cfg_rows
from ..unit.infotext import infotext_key, to_infotext
from ..unit.params import UnitParams, UnitValidationError, units_from_args

log = logging.getLogger(__name__)
ATTRIBUTE = "caphuman_generation"
LATENT_SCALE = 8


def _message(error: Exception) -> str:
    message = str(error) or type(error).__name__
    return message if message.startswith("CapHuman") else f"CapHuman: {message}"


def generation_of(p) -> Generation | None:
    return getattr(p, ATTRIBUTE, None)


def current_model(p):
    """The model the webui samples now (`p.sd_model` follows `shared.sd_model`: refiner, hires checkpoint)."""
    from modules import shared

    return shared.sd_model if shared.sd_model is not None else p.sd_model


def sampled_unet(p):
    return current_model(p).model.diffusion_model


def check_model(model) -> None:
    """CapFace was trained beside SD1.5: refuse the webui's other model families by its own flags (an SD2 UNet has
    SD1.5's block widths, so shapes alone do not tell)."""
    for flag, family in (("is_sdxl", "SDXL"), ("is_sd2", "SD2"), ("is_sd3", "SD3"), ("is_ssd", "SSD-1B")):
        if getattr(model, flag, False):
            raise CapHumanError(f"CapHuman works with SD1.x checkpoints only (SD1.5 and its fine-tunes); the loaded "
                                f"model is {family}. Switch checkpoints or disable the CapHuman unit.")


def check_unit(unet, unit: PreparedUnit) -> None:
    """A readable error naming the CapHuman file when its CapFace cannot feed `unet`."""
    from ..hook import IncompatibleUNetError, check_compatible

    try:
        check_compatible(unet, [unit.capface])
    except IncompatibleUNetError as error:
        raise CapHumanError(f"CapHuman: {unit.model_name or 'the CapHuman file'}: {error}") from error


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


def low_vram() -> bool:
    from modules import shared

    options = getattr(shared, "cmd_opts", None)
    return bool(getattr(options, "lowvram", False) or getattr(options, "medvram", False))


def start(p, args: Sequence, prepare: Callable[[UnitParams, int], PreparedUnit], render: Callable,
          offload: bool, describe: Callable[[UnitParams], str] = to_infotext, model_of: Callable = current_model,
          unet_of: Callable = lambda model: model.model.diffusion_model) -> Generation | None:
    """`process`: validate and prepare the enabled units; any error is kept for `p.sample` to raise.
    `describe(unit)` is a unit's infotext, written once the unit has acted; `model_of(p)` / `unet_of(model)` find the
    model and UNet the checks run against (Forge's differ)."""
    end(p)
    try:
        units = enabled_units(args, getattr(p, "caphuman_overrides", {}))
    except UnitValidationError as error:
        generation = Generation.failed(_message(error))
    else:
        if not units:
            return None
        try:
            model = model_of(p)
            check_model(model)
            prepared = [prepare(unit, position) for position, unit in units]
            for unit in prepared:
                check_unit(unet_of(model), unit)
        except Exception as error:  # noqa: BLE001 - any failure stops this generation with a readable message
            generation = Generation.failed(_message(error))
        else:
            generation = Generation(prepared, render, offload=offload)
    setattr(p, ATTRIBUTE, generation)
    _wrap_sample(p, generation, describe)
    return generation


def _wrap_sample(p, generation: Generation, describe: Callable[[UnitParams], str]) -> None:
    """Raise a stored error before sampling starts; take the hook off when `p.sample` ends, however it ends;
    write each unit's infotext only once it has acted."""
    original = p.sample

    def sample(*args, **kwargs):
        generation.raise_if_failed()
        try:
            return original(*args, **kwargs)
        finally:
            generation.detach()
            for unit, acted in zip(generation.units, generation.acted(), strict=True):
                if acted and unit.position not in generation.described:  # once per job (X/Y/Z cells share the dict)
                    generation.described.add(unit.position)
                    p.extra_generation_params[infotext_key(unit.position)] = describe(unit.params)

    p.sample = sample


def follow_checks(p, generation: Generation, unet) -> None:
    """Before the hook moves to another model (hires checkpoint, refiner): is it one CapFace can feed?"""
    if generation.hook is not None and generation.hook.unet is unet:
        return
    check_model(current_model(p))
    for unit in generation.units:
        check_unit(unet, unit)


def pass_frame(p, latent_hw: tuple[int, int]) -> Frame:
    """Where this sampling pass's latent sits in the picture the head is placed in."""
    if getattr(p, "is_hr_pass", False) and getattr(p, "hr_upscale_to_x", 0):
        first = (p.height // LATENT_SCALE, p.width // LATENT_SCALE)
        upscaled = (p.hr_upscale_to_y // LATENT_SCALE, p.hr_upscale_to_x // LATENT_SCALE)
        return hires_frame(first, upscaled, latent_hw, (getattr(p, "truncate_x", 0), getattr(p, "truncate_y", 0)))
    paste_to = getattr(p, "paste_to", None)
    if paste_to and getattr(p, "inpaint_full_res", False):
        whole = getattr(p, "mask_for_overlay", None) or (p.init_images[0] if getattr(p, "init_images", None) else None)
        if whole is not None:
            return crop_frame(whole.size, paste_to)
    return full_frame(latent_hw)


def before_sampling(p, latent: torch.Tensor) -> None:
    """`process_before_every_sampling`: hints for this latent, the hook on the UNet sampled now."""
    generation = generation_of(p)
    if generation is None or generation.error is not None:
        return
    unet = sampled_unet(p)
    try:
        follow_checks(p, generation, unet)
        latent_hw = tuple(latent.shape[-2:])
        generation.attach(unet, pass_frame(p, latent_hw), latent_hw)
    except Exception as error:  # noqa: BLE001 - raised from the UNet's first call instead (the webui swallows it)
        generation.fail(_message(error), unet)


def step_rows(params) -> RowPlan | None:
    """The CFG row layout of this step, from the conditioning the sampler holds (`MulticondLearnedConditioning`:
    one list of sub-prompts per image); None when the batch is not laid out that way."""
    denoiser = params.denoiser
    extra = getattr(getattr(denoiser, "sampler", None), "sampler_extra_args", None) or {}
    batch = getattr(extra.get("cond"), "batch", None)
    if not batch:
        return None
    repeats = [len(prompts) for prompts in batch]
    rows, images = params.x.shape[0], len(repeats)
    for extra_sets in (0, 1):  # instruct-pix2pix adds a second set of uncond rows
        if rows == sum(repeats) + images * (1 + extra_sets):
            return RowPlan(cfg_rows(repeats, images, extra_sets), getattr(denoiser, "step", 0))
    return None


def step_progress(params) -> float:
    """Fraction of this pass's model evaluations done (what the webui's own skip-early-CFG uses)."""
    denoiser = params.denoiser
    step, total = getattr(denoiser, "step", None), getattr(denoiser, "total_steps", None)
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        return step / total
    total = params.total_sampling_steps
    return params.sampling_step / total if total else 0.0


def on_cfg_denoiser(params) -> None:
    """Every step: follow a model swap (refiner), set unit windows and the row plan."""
    p = getattr(params.denoiser, "p", None)
    generation = generation_of(p)
    if generation is None or generation.error is not None or generation.hook is None:
        return
    unet = sampled_unet(p)
    try:
        follow_checks(p, generation, unet)
        generation.follow(unet)
        generation.step(step_progress(params), step_rows(params))
    except Exception as error:  # noqa: BLE001 - raised from the UNet's next call instead (the webui swallows it)
        generation.fail(_message(error), unet)


def end(p) -> None:
    """`postprocess` (and the start of the next job on the same `p`): nothing of this job stays."""
    generation = generation_of(p)
    if generation is not None:
        generation.close()
        setattr(p, ATTRIBUTE, None)


__all__ = ["CapHumanError", "before_sampling", "end", "generation_of", "on_cfg_denoiser", "start"]
