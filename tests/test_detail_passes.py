"""Detail passes of other extensions (ADetailer's face inpaint) with CapHuman units, per unit `detail_passes`, on the
A1111 call sequence (tests/webui_sim.py): the pass is an img2img inpaint "only masked" job run from the image's
postprocess with the job's script arguments copied, as ADetailer v25.3.0 builds it (`get_i2i_p`: a shallow copy of
each script argument, the script runner filtered by its "Script names to apply" setting, `_ad_inner` set) and as its
`postprocess_image` surrounds it: every script's `postprocess` on a copy of the job before the pass (to undo
ControlNet's hijack), `before_process` and `process` on another copy after it (to set them up for the next image)."""

from __future__ import annotations

import types
from copy import copy

import pytest
import torch
from PIL import Image, ImageDraw

from caphuman_ext import external_code
from caphuman_ext.lifecycle.detail import DETAIL_KEY
from tests import webui_sim
from tests.webui_jobs import STEERABLE, generate, unit

SIZE = 256
FACE = (72, 72, 136, 136)  # the box the "detector" found (left, top, right, bottom)


def detail_pass(listed: bool, face: tuple[int, int, int, int] = FACE):
    """ADetailer's pass: the face box masked, inpainted "only masked" at 128² with padding 16, denoise 0.5; the
    CapHuman script kept only when `listed` (its file name in `ad_script_names`)."""

    def run(p, latent):
        from modules import processing

        for script in p.scripts.alwayson_scripts:  # ADetailer: p.scripts.postprocess(copy(p), dummy)
            script.postprocess(copy(p), types.SimpleNamespace(images=[], infotexts=[]),
                               *p.script_args[script.args_from:script.args_to])
        picture = webui_sim.latent_picture(latent)
        mask = Image.new("L", picture.size, 0)
        ImageDraw.Draw(mask).rectangle((face[0], face[1], face[2] - 1, face[3] - 1), fill=255)
        i2i = processing.StableDiffusionProcessingImg2Img(
            init_images=[picture], mask=mask, mask_blur=4, inpaint_full_res=True, inpaint_full_res_padding=16,
            width=128, height=128, denoising_strength=0.5, sd_model=p.sd_model, prompt="a face", seed=p.seed,
            steps=p.steps, cfg_scale=p.cfg_scale, extra_generation_params=dict(p.extra_generation_params))
        runner = copy(p.scripts)
        runner.alwayson_scripts = [s for s in runner.alwayson_scripts if listed]
        i2i.scripts, i2i.script_args = runner, tuple(copy(a) for a in p.script_args)
        i2i._ad_disabled = i2i._ad_inner = True
        run.jobs.append(i2i)
        result = processing.process_images(i2i).images[0]
        again = copy(p)  # ADetailer: p.scripts.before_process(copy_p); p.scripts.process(copy_p)
        for script in p.scripts.alwayson_scripts:
            script.process(again, *p.script_args[script.args_from:script.args_to])
        return result

    run.jobs = []
    return run


def with_pass(webui, units, listed: bool, **fields):  # noqa: F811
    adetailer = detail_pass(listed, **fields)
    _, p = generate(webui, units, width=SIZE, height=SIZE, postprocess_image_pass=adetailer)
    return [webui_sim.picture_tensor(picture) for picture in p.pictures], p, adetailer.jobs


def region(box) -> torch.Tensor:
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[box[1]:box[3], box[0]:box[2]] = True
    return inside


def test_off_is_the_pass_without_caphuman_bit_for_bit(webui):  # noqa: F811
    units = [unit(webui, model=STEERABLE, center_x=0.4, center_y=0.4, scale=0.35, detail_passes="off")]
    unlisted, _, _ = with_pass(webui, units, listed=False)
    off, p, jobs = with_pass(webui, units, listed=True)
    assert torch.equal(off[0], unlisted[0])
    assert jobs and getattr(jobs[0], "caphuman_generation", None) is None
    assert DETAIL_KEY not in p.extra_generation_params


def test_head_acts_where_the_first_pass_head_is_in_the_crop(webui):  # noqa: F811
    head = unit(webui, model=STEERABLE, center_x=0.4, center_y=0.4, scale=0.35)  # detail_passes: "head"
    unlisted, _, _ = with_pass(webui, [head], listed=False)
    listed, p, jobs = with_pass(webui, [head], listed=True)
    change = (listed[0] - unlisted[0]).abs().mean(0)
    mask = torch.from_numpy(__import__("numpy").asarray(jobs[0].mask_for_overlay) > 0)
    assert float(change[~mask].abs().max()) == 0  # nothing outside the pass's (blurred) mask
    x, y, w, h = jobs[0].paste_to
    crop = region((x, y, x + w, y + h)) & mask
    on_head = external_code.head_mask(head, SIZE, SIZE)[0, 0] > 0
    inside, outside = float(change[crop & on_head].mean()), float(change[crop & ~on_head].mean())
    assert inside > 2 * outside, f"inside {inside:.3g}, outside {outside:.3g}"
    assert p.extra_generation_params[DETAIL_KEY] == "1 head"
    assert "detail_passes head" in p.extra_generation_params["CapHuman 1"]


def test_identity_moves_the_head_onto_the_mask(webui):  # noqa: F811
    """The first pass put the head far from the face the pass found: "head" adds ~nothing there, "identity" puts
    the unit's head on the mask's box."""
    far = dict(model=STEERABLE, center_x=0.8, center_y=0.8, scale=0.3)
    unlisted, _, _ = with_pass(webui, [unit(webui, **far)], listed=False)
    head, _, _ = with_pass(webui, [unit(webui, **far)], listed=True)
    identity, p, jobs = with_pass(webui, [unit(webui, detail_passes="identity", **far)], listed=True)
    face = region(FACE)
    head_change = float((head[0] - unlisted[0]).abs().mean(0)[face].mean())
    identity_change = (identity[0] - unlisted[0]).abs().mean(0)
    assert head_change < 0.01 and float(identity_change[face].mean()) > 0.1
    ys, xs = torch.nonzero(identity_change > identity_change.max() / 4, as_tuple=True)
    centre = (float(xs.float().mean()), float(ys.float().mean()))
    assert FACE[0] < centre[0] < FACE[2] and FACE[1] < centre[1] < FACE[3]
    assert p.extra_generation_params[DETAIL_KEY] == "1 identity"


@pytest.mark.parametrize("mode", ["off", "identity"])
def test_a_job_of_its_own_is_not_a_detail_pass(webui, mode):  # noqa: F811
    """An img2img "only masked" job the user runs acts as always, whatever `detail_passes` says."""
    init = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    fields = dict(init_latent=init, inpaint_full_res=True, paste_to=(64, 32, 128, 128),
                  init_images=[Image.new("RGB", (256, 256))])
    plain, _ = generate(webui, (), **fields)
    head = unit(webui, model=STEERABLE, center_x=0.4, center_y=0.35, scale=0.5)
    default, _ = generate(webui, [head], **fields)
    steered, p = generate(webui, [{**head, "detail_passes": mode}], **fields)
    assert torch.equal(steered[0], default[0]) and not torch.equal(steered[0], plain[0])
    assert DETAIL_KEY not in p.extra_generation_params
