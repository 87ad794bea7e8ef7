"""Runs a face refine pass (lifecycle/refine.py) as the webui's own img2img inpaint "only masked" job
(`modules.processing.StableDiffusionProcessingImg2Img` + `process_images`, as ADetailer does), in AUTOMATIC1111 and
the Forge family alike: the picture's prompt, seed, sampler and steps; CapHuman the only always-on script, with the
job's unit arguments; the pass marked with its plan, so that CapHuman runs that unit only and plans no refine in it.
"""

from __future__ import annotations

import logging
from copy import copy

from ..external_code import find_script
from ..lifecycle.refine import ATTRIBUTE, RefinePlan

log = logging.getLogger(__name__)
_RUNNING: list[RefinePlan] = []  # refine passes running now (a refine never starts inside another)


def _image_index(p) -> int:
    return int(getattr(p, "iteration", 0) or 0) * int(getattr(p, "batch_size", 1) or 1) + \
        int(getattr(p, "batch_index", 0) or 0)


def _pick(values, index: int, default):
    return values[index] if isinstance(values, (list, tuple)) and 0 <= index < len(values) else default


def refine(p, image, plan: RefinePlan):
    """The picture with the plan's head refined (the picture itself when the pass gives nothing back)."""
    if _RUNNING:
        return image
    from modules import processing

    script = find_script(p)
    if script is None:
        return image
    index = _image_index(p)
    fields = dict(
        init_images=[image], mask=plan.mask, mask_blur=plan.feather, inpainting_fill=1, inpaint_full_res=True,
        inpaint_full_res_padding=plan.padding, inpainting_mask_invert=0, resize_mode=0,
        denoising_strength=plan.denoise, sd_model=p.sd_model, width=plan.size, height=plan.size,
        prompt=_pick(getattr(p, "all_prompts", None), index, p.prompt),
        negative_prompt=_pick(getattr(p, "all_negative_prompts", None), index, getattr(p, "negative_prompt", "")),
        seed=_pick(getattr(p, "all_seeds", None), index, getattr(p, "seed", -1)),
        subseed=_pick(getattr(p, "all_subseeds", None), index, getattr(p, "subseed", -1)),
        subseed_strength=getattr(p, "subseed_strength", 0), steps=p.steps, cfg_scale=p.cfg_scale,
        batch_size=1, n_iter=1, do_not_save_samples=True, do_not_save_grid=True,
        # values only: A1111's hires job keeps functions of the job there ("Hires prompt" reads p.all_hr_prompts)
        extra_generation_params={key: value for key, value in (getattr(p, "extra_generation_params", {}) or {}).items()
                                 if not callable(value)})
    for name in ("sampler_name", "scheduler", "styles", "override_settings", "outpath_samples", "outpath_grids"):
        if getattr(p, name, None) is not None:
            fields[name] = getattr(p, name)
    job = processing.StableDiffusionProcessingImg2Img(**fields)
    job.cached_c, job.cached_uc = [None, None], [None, None]
    runner = copy(p.scripts)
    runner.alwayson_scripts = [script]
    job.scripts, job.script_args = runner, p.script_args
    setattr(job, ATTRIBUTE, plan)
    job._ad_disabled = True  # noqa: SLF001 - ADetailer's own flag: no ADetailer pass inside ours
    _RUNNING.append(plan)
    try:
        processed = processing.process_images(job)
    finally:
        _RUNNING.pop()
        close = getattr(job, "close", None)
        if callable(close):
            close()
    images = getattr(processed, "images", None)
    return images[0] if images else image


__all__ = ["refine"]
