"""The CapHuman unit through A1111 v1.10.1's generation call sequence (tests/webui_sim.py), case by case.

Real parts: the extension's script class, a real ldm UNetModel, the real identity encoder and head pipeline on
synthetic model files. Outputs are final latents, compared as tensors.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from caphuman_ext.capface import CapFace
from caphuman_ext.hook import UNetHook
from caphuman_ext.lifecycle.geometry import render_plan
from caphuman_ext.unit.builder import UnitBuilder
from tests import webui_sim
from tests.core_helpers import tiny_unet
from tests.steerable import hint_coverage
from tests.webui_jobs import (
    STEERABLE,
    changed,
    generate,
    plain_then_caphuman_then_plain,
    rendered_hints,
    unit,
)


def test_caphuman_changes_every_image_and_leaves_no_trace(webui):
    before, steered, p = plain_then_caphuman_then_plain(webui, [unit(webui)], batch_size=2)
    assert all(c > 1e-3 for c in changed(before, steered))
    assert all(torch.isfinite(s).all() for s in steered)
    assert "CapHuman 1" in p.extra_generation_params


@pytest.mark.parametrize("fields", [
    dict(enable_hr=True, n_iter=2),  # the hires hint must not stay for the next batch's first pass
    dict(width=132),  # latent 16, not 132 // 8 * 8 / 8 = 16.5
    dict(enable_hr=True, hr_scale=1.3),  # 166.4 px → latent 20
    dict(enable_hr=True, hr_resize_x=192, hr_resize_y=128),  # the webui truncates the upscaled latent
    dict(width=96, height=136, enable_hr=True, hr_resize_x=200, hr_resize_y=120),
], ids=["hires-batch-count-2", "width-132", "hires-x1.3", "hires-resize-to-192x128", "hires-resize-odd"])
def test_every_size_gets_a_hint_of_its_latent(webui, fields):
    before, steered, p = plain_then_caphuman_then_plain(webui, [unit(webui)], **fields)
    assert all(c > 1e-3 for c in changed(before, steered))
    assert p.calls and all(call.hooked for call in p.calls)
    assert any(call.is_hr_pass for call in p.calls) or not fields.get("enable_hr")


def test_hires_truncated_hint_is_the_first_pass_canvas_cropped(webui):
    """Hires "resize to" 192×128 from 128²: the webui upscales to 192² and keeps latent rows 4..20; the hint is the
    same head on the upscaled canvas, cropped like the latent — not a new head placed in a 192×128 picture."""
    hints = {}
    original = UnitBuilder.hint

    def spy(self, unit_params, width, height, device):
        hint = original(self, unit_params, width, height, device)
        hints[(width, height)] = hint
        return hint

    UnitBuilder.hint = spy
    try:
        generate(webui, [unit(webui, center_y=0.3)], enable_hr=True, hr_resize_x=192, hr_resize_y=128)
    finally:
        UnitBuilder.hint = original
    assert (192, 192) in hints and (192, 128) not in hints  # rendered on the upscaled canvas, then cropped
    assert (128, 128) in hints


def test_img2img_resize_by_uses_the_latent_not_p_width(webui):
    init = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    before, steered, _ = plain_then_caphuman_then_plain(webui, [unit(webui)], width=133, height=133,
                                                        init_latent=init)
    assert all(c > 1e-3 for c in changed(before, steered))


def test_postprocess_image_pass_sees_a_plain_unet(webui):
    """An ADetailer-style second pass run from postprocess_image gets no CapFace residuals."""
    seen = []

    def second_pass(p, image):
        unet = p.sd_model.model.diffusion_model
        x, t, text = image.clone(), torch.tensor([500.0]), webui_sim.text_embedding("face")
        with torch.no_grad():
            hooked = unet(x, t, context=text)
            handles = {k: dict(m._forward_pre_hooks) for k, m in unet.named_modules()}
            for m in unet.modules():
                m._forward_pre_hooks.clear()
                m._forward_hooks.clear()
            bare = unet(x, t, context=text)
            for k, m in unet.named_modules():
                m._forward_pre_hooks.update(handles[k])
        seen.append(torch.equal(hooked, bare))
        return image

    generate(webui, [unit(webui)], postprocess_image_pass=second_pass, batch_size=2)
    assert seen == [True, True]


def count_capface_rows(monkeypatch):
    rows = []
    original = CapFace.residuals

    def spy(self, x, timesteps, context, features):
        rows.append(x.shape[0])
        return original(self, x, timesteps, context, features)

    monkeypatch.setattr(CapFace, "residuals", spy)
    return rows


def test_and_prompts_with_different_counts_group_rows_by_image(webui, monkeypatch):
    """Prompt matrix / AND: image 0 has three sub-prompts, image 1 one: rows [0, 0, 0, 1, 0, 1]."""
    prompts = ["a AND b AND c", "d"]
    rows = count_capface_rows(monkeypatch)
    shared, _ = generate(webui, [unit(webui)], prompt=prompts, batch_size=2)
    assert rows and set(rows) == {2}  # one CapFace row per image
    monkeypatch.setattr(webui.module.host, "step_rows", lambda params: None)
    every_row, _ = generate(webui, [unit(webui)], prompt=prompts, batch_size=2)
    for a, b in zip(shared, every_row, strict=True):
        assert (a - b).abs().max() < 1e-4


def test_separate_cond_and_uncond_calls_share_one_capface_pass(webui, monkeypatch):
    rows = count_capface_rows(monkeypatch)
    together, _ = generate(webui, [unit(webui)], steps=3)
    assert rows == [1, 1, 1]
    rows.clear()
    webui.fake.shared.opts.batch_cond_uncond = False
    try:
        apart, _ = generate(webui, [unit(webui)], steps=3)
    finally:
        webui.fake.shared.opts.batch_cond_uncond = True
    assert rows == [1, 1, 1]  # the uncond call of each step reuses the cond call's residuals
    assert (together[0] - apart[0]).abs().max() < 1e-4


def test_skip_early_cfg_drops_uncond_rows_safely(webui):
    webui.fake.shared.opts.skip_early_cond = 0.5
    try:
        before, steered, _ = plain_then_caphuman_then_plain(webui, [unit(webui)], batch_size=2)
    finally:
        webui.fake.shared.opts.skip_early_cond = 0.0
    assert all(c > 1e-3 for c in changed(before, steered))


def test_hires_checkpoint_is_hooked_in_the_hires_pass(webui):
    generate(webui, [unit(webui)], enable_hr=True, hr_checkpoint=webui.other)
    hr = [call for call in webui_sim.CALL_LOG if call.is_hr_pass]
    assert hr and all(call.unet is webui.other.model.diffusion_model and call.hooked for call in hr)
    assert webui_sim.no_caphuman_hooks(webui.base.model.diffusion_model, webui.other.model.diffusion_model)


def test_refiner_switch_moves_the_hook(webui):
    generate(webui, [unit(webui)], refiner=webui.other, refiner_switch_at=0.5, steps=4)
    refined = [call for call in webui_sim.CALL_LOG if call.unet is webui.other.model.diffusion_model]
    assert len(refined) == 2 and all(call.hooked for call in webui_sim.CALL_LOG)


def test_only_masked_inpaint_places_the_head_in_the_crop(webui):
    """The picture is 256²; the webui samples the crop (64, 32, 128, 128) at 128²: the hint is the 256² canvas
    rendered at that density (256² × 1) and cropped there."""
    hints = {}
    original = UnitBuilder.hint

    def spy(self, unit_params, width, height, device):
        hints[(width, height)] = original(self, unit_params, width, height, device)
        return hints[(width, height)]

    UnitBuilder.hint = spy
    try:
        init = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
        generate(webui, [unit(webui)], init_latent=init, inpaint_full_res=True, paste_to=(64, 32, 128, 128),
                 init_images=[Image.new("RGB", (256, 256))])
    finally:
        UnitBuilder.hint = original
    assert list(hints) == [(256, 256)]


def test_render_plan_sizes():
    from caphuman_ext.lifecycle.geometry import crop_frame, full_frame, hires_frame

    assert render_plan(full_frame((16, 16)), (16, 16)).size == (128, 128)
    frame = hires_frame((16, 16), (24, 24), (16, 24), (0, 8))
    plan = render_plan(frame, (16, 24))
    assert plan.size == (192, 192) and plan.crop == (0, 32, 192, 128) and not plan.needs_resize
    plan = render_plan(crop_frame((256, 256), (64, 32, 128, 128)), (16, 16))
    assert plan.size == (256, 256) and plan.crop == (64, 32, 128, 128)


def test_incompatible_capface_stops_with_a_clear_message(webui, tmp_path):
    small = webui_sim.FakeSDModel(tiny_unet(seed=8, channel_mult=[1, 2, 2]), "small")
    webui_sim.CALL_LOG.clear()
    p = webui_sim.Processing(script=webui.script, script_args=(unit(webui),), base=small)
    with pytest.raises(RuntimeError, match="caphuman_tiny.safetensors: the CapFace .* does not fit the loaded"):
        webui_sim.process_images(p)
    assert not webui_sim.CALL_LOG  # stopped before any UNet call
    assert webui_sim.no_caphuman_hooks(small.model.diffusion_model)
    assert "CapHuman 1" not in p.extra_generation_params


def test_a_failing_hires_render_stops_the_generation(webui):
    original = UnitBuilder.hint

    def fails_at_hires(self, unit_params, width, height, device):
        if width > 128:
            raise RuntimeError("head render failed")
        return original(self, unit_params, width, height, device)

    UnitBuilder.hint = fails_at_hires
    try:
        p = webui_sim.Processing(script=webui.script, script_args=(unit(webui),), base=webui.base, enable_hr=True)
        with pytest.raises(RuntimeError, match="CapHuman: head render failed"):
            webui_sim.process_images(p)
    finally:
        UnitBuilder.hint = original
    assert webui_sim.no_caphuman_hooks(webui.base.model.diffusion_model)


def test_validation_error_stops_the_generation(webui):
    p = webui_sim.Processing(script=webui.script, script_args=({"enabled": True, "reference_images": []},),
                             base=webui.base)
    with pytest.raises(RuntimeError, match="reference_images"):
        webui_sim.process_images(p)
    assert webui_sim.no_caphuman_hooks(webui.base.model.diffusion_model)


class Shrink(torch.nn.Module):
    """Kohya Deep Shrink (sd-webui-kohya-hiresfix): a block whose input is downscaled; the webui's cat hijack
    brings the decoder's features back to each skip's size."""

    def __init__(self, block, scale: float = 0.5) -> None:
        super().__init__()
        self.block, self.scale = block, scale

    def forward(self, x, *args, **kwargs):
        return self.block(torch.nn.functional.interpolate(x, scale_factor=self.scale, mode="bicubic"), *args,
                          **kwargs)


def deep_shrink(unet, x, t, context):
    original = unet.input_blocks[1]
    unet.input_blocks[1] = Shrink(original)
    try:
        return unet(x, t, context=context)
    finally:
        unet.input_blocks[1] = original


def test_deep_shrink_gets_resized_residuals(webui):
    before, steered, _ = plain_then_caphuman_then_plain(webui, [unit(webui)], unet_forward=deep_shrink)
    assert all(torch.isfinite(s).all() for s in steered) and changed(before, steered)[0] > 1e-3


def test_tiled_sampling_is_refused_with_a_clear_message(webui):
    def tiles(unet, x, t, context):
        left = unet(x[..., :8], t, context=context)
        return torch.cat([left, unet(x[..., 8:], t, context=context)], dim=-1)

    p = webui_sim.Processing(script=webui.script, script_args=(unit(webui),), base=webui.base, unet_forward=tiles)
    with pytest.raises(ValueError, match="Tiled Diffusion"):
        webui_sim.process_images(p)
    assert webui_sim.no_caphuman_hooks(webui.base.model.diffusion_model)


def test_reference_only_pass_gets_no_residuals(webui):
    """sd-webui-controlnet's reference-only runs the UNet's forward on the reference latent first, inside the
    call: that pass must be the plain UNet's."""
    reference_outputs = []

    def with_reference_pass(unet, x, t, context):
        reference = torch.full_like(x, 0.25)

        def forward_with_reference(x, timesteps=None, context=None, **kwargs):
            reference_outputs.append(type(unet).forward(unet, reference, timesteps, context=context))
            return type(unet).forward(unet, x, timesteps, context=context)

        unet.forward = forward_with_reference
        try:
            return unet(x, t, context=context)
        finally:
            del unet.forward

    generate(webui, [unit(webui)], unet_forward=with_reference_pass, steps=2)
    hooked = list(reference_outputs)
    reference_outputs.clear()
    generate(webui, (), unet_forward=with_reference_pass, steps=2)
    for a, b in zip(hooked, reference_outputs, strict=True):
        assert torch.equal(a, b)


def identity_steps(monkeypatch) -> list[bool]:
    seen = []
    original = CapFace.residuals

    def spy(self, x, timesteps, context, features):
        seen.append(bool(context.abs().sum() > 0))
        return original(self, x, timesteps, context, features)

    monkeypatch.setattr(CapFace, "residuals", spy)
    return seen


@pytest.mark.parametrize("fields, expected", [
    # Karras spends more steps at high noise: the reference's tau (t > 700) would cover 7 of 20 steps, not 6
    (dict(steps=20, karras=True), [False] * 6 + [True] * 14),
    # the webui runs t_enc + 1 = 6 of the 10 steps at denoise 0.5: 0/6 and 1/6 are below 0.3
    (dict(steps=10, init_latent=torch.zeros(1, 4, 16, 16), denoising_strength=0.5), [False] * 2 + [True] * 4),
], ids=["karras-20-steps", "img2img-denoise-0.5"])
def test_pose_only_phase_counts_the_steps_that_run(webui, monkeypatch, fields, expected):
    seen = identity_steps(monkeypatch)
    generate(webui, [unit(webui, pose_only=0.3)], **fields)
    assert seen == expected


def test_start_and_end_are_fractions_of_the_steps(webui, monkeypatch):
    rows = count_capface_rows(monkeypatch)
    generate(webui, [unit(webui, start=0.25, end=0.75)], steps=8)
    assert len(rows) == 4


def test_infotext_is_keyed_by_unit_position(webui):
    _, p = generate(webui, [{"enabled": False}, unit(webui, strength=0.8)])
    assert "CapHuman 2" in p.extra_generation_params and "CapHuman 1" not in p.extra_generation_params
    assert "strength 0.8" in p.extra_generation_params["CapHuman 2"]


def test_a_unit_that_never_acts_is_not_in_the_infotext(webui):
    _, p = generate(webui, [unit(webui, strength=0.0)])
    assert not any(key.startswith("CapHuman") for key in p.extra_generation_params)


def test_low_vram_moves_models_off_after_use(webui, monkeypatch):
    offloads = []
    monkeypatch.setattr(UnitBuilder, "offload", lambda self: offloads.append(True))
    webui.fake.shared.cmd_opts.lowvram = True
    try:
        generate(webui, [unit(webui)])
    finally:
        webui.fake.shared.cmd_opts.lowvram = False
    assert len(offloads) >= 2  # after preprocessing and after the generation


def test_fp8_weights_compute_capface_in_a_real_dtype(webui):
    """The webui's "FP8 weight" option stores the UNet in float8 and casts weights at use (devices.manual_cast)."""
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("no float8 in this torch")
    unet = tiny_unet(seed=1)
    for module in unet.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            module.to(torch.float8_e4m3fn)
    fp8 = webui_sim.FakeSDModel(unet, "fp8")

    def manual_cast(unet, x, t, context):
        originals = {cls: cls.forward for cls in (torch.nn.Linear, torch.nn.Conv2d)}

        def cast_at_use(self, input):
            if self.weight.dtype != torch.float8_e4m3fn:
                return originals[type(self)](self, input)
            weight = self.weight.to(input.dtype)
            bias = None if self.bias is None else self.bias.to(input.dtype)
            if isinstance(self, torch.nn.Linear):
                return torch.nn.functional.linear(input, weight, bias)
            return self._conv_forward(input, weight, bias)

        for cls in originals:
            cls.forward = cast_at_use
        try:
            return unet(x, t, context=context)
        finally:
            for cls, original in originals.items():
                cls.forward = original

    before, steered, _ = plain_then_caphuman_then_plain(webui, [unit(webui)], base=fp8, unet_forward=manual_cast)
    assert all(torch.isfinite(s).all() for s in steered) and changed(before, steered)[0] > 1e-3


def test_hook_is_on_only_while_sampling(webui):
    generate(webui, [unit(webui)], n_iter=2, batch_size=1)
    assert webui_sim.CALL_LOG and all(call.hooked for call in webui_sim.CALL_LOG)
    assert not any(isinstance(getattr(h, "__self__", None), UNetHook)
                   for h in webui.base.model.diffusion_model._forward_pre_hooks.values())


def test_score_setting_writes_scores_and_adds_an_overlay(webui):
    webui.fake.shared.opts.caphuman_score = True
    try:
        images, p = generate(webui, [{"enabled": False}, unit(webui)], steps=2)
    finally:
        webui.fake.shared.opts.caphuman_score = False
    assert "CapHuman score 2" in p.extra_generation_params  # keyed like the unit, by its tab
    assert len(p.processed.images) == len(images) + 1  # the overlay follows the images


@pytest.mark.parametrize("kind", ["sd2-flag", "text-width"])
def test_other_model_families_are_refused(webui, kind):
    """An SD2 UNet has SD1.5's block widths: the webui's model flags and the cross-attention width tell."""
    if kind == "sd2-flag":
        model = webui_sim.FakeSDModel(tiny_unet(seed=1), "sd2")
        model.is_sd1, model.is_sd2 = False, True
        match = "SD1.x checkpoints only"
    else:
        model = webui_sim.FakeSDModel(tiny_unet(seed=1, context_dim=48), "wide")
        match = "text context"
    p = webui_sim.Processing(script=webui.script, script_args=(unit(webui),), base=model)
    with pytest.raises(RuntimeError, match=match):
        webui_sim.process_images(p)
    assert webui_sim.no_caphuman_hooks(model.model.diffusion_model)


def test_xyz_cells_sharing_one_infotext_dict_each_write_their_own(webui):
    """The X/Y/Z plot copies p shallowly: every cell shares one extra_generation_params."""
    shared_params: dict = {}
    for strength in (0.5, 1.5):
        p = webui_sim.Processing(script=webui.script, script_args=(unit(webui, strength=strength),),
                                 base=webui.base, steps=2, extra_generation_params=shared_params)
        webui_sim.process_images(p)
        assert f"strength {strength:g};" in shared_params["CapHuman 1"]


# where CapHuman acts: the steerable CapFace (tests/steerable.py) -------------------------------------------------------
def head_cells(hint: torch.Tensor) -> torch.Tensor:
    """Latent cells more than half covered by the rendered head (where the hard head mask is 1): (h, w) bool."""
    return torch.nn.functional.avg_pool2d(hint_coverage(hint), 8)[0, 0] > 0.5


def change_inside_and_outside(before: torch.Tensor, after: torch.Tensor, head: torch.Tensor) -> tuple[float, float]:
    change = (after - before).abs().mean(dim=(0, 1))
    return float(change[head].mean()), float(change[~head].mean())


def centroid_x(before: torch.Tensor, after: torch.Tensor) -> float:
    change = (after - before).abs().mean(dim=(0, 1))
    return float((change.sum(0) * torch.arange(change.shape[1])).sum() / change.sum())


@pytest.mark.parametrize("fields", [{}, dict(enable_hr=True, hr_scale=1.5)], ids=["txt2img", "hires"])
def test_the_change_is_where_the_unit_puts_the_head(webui, monkeypatch, fields):
    hints = rendered_hints(webui, monkeypatch)
    centroids = []
    for x in (0.3, 0.7):
        hints.clear()
        before, steered, _ = plain_then_caphuman_then_plain(
            webui, [unit(webui, model=STEERABLE, center_x=x, center_y=0.5, scale=0.8)], **fields)
        size = max(hints, key=lambda wh: wh[0] * wh[1])  # the last pass's canvas
        head = head_cells(hints[size])
        assert head.shape == before[0].shape[-2:] and 0 < head.sum() < head.numel()
        inside, outside = change_inside_and_outside(before[0], steered[0], head)
        assert inside > 2 * outside, f"head at x={x}: change inside {inside:.3g}, outside {outside:.3g}"
        centroids.append(centroid_x(before[0], steered[0]))
    assert centroids[1] - centroids[0] > 0.15 * before[0].shape[-1]  # the change moves with the head


def test_only_masked_inpaint_acts_where_the_head_is_in_the_crop(webui, monkeypatch):
    """The picture is 256², the webui samples the crop (64, 32, 128, 128): the head at (0.4, 0.35) of the picture is
    at (0.3, 0.2) of the crop; the change sits there, not at the head's place in the crop's own frame."""
    hints = rendered_hints(webui, monkeypatch)
    init = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    fields = dict(init_latent=init, inpaint_full_res=True, paste_to=(64, 32, 128, 128),
                  init_images=[Image.new("RGB", (256, 256))])
    before, steered, _ = plain_then_caphuman_then_plain(
        webui, [unit(webui, model=STEERABLE, center_x=0.4, center_y=0.35, scale=0.5)], **fields)
    canvas = hints[(256, 256)]
    head = head_cells(canvas[..., 32:160, 64:192])
    assert 0 < head.sum() < head.numel()
    inside, outside = change_inside_and_outside(before[0], steered[0], head)
    assert inside > 2 * outside, f"inside {inside:.3g}, outside {outside:.3g}"


def capface_calls_by_pass(webui, monkeypatch) -> list[bool]:
    """`is_hr_pass` of every UNet call that ran CapFace, in the next generations."""
    passes: list[bool] = []
    original = CapFace.residuals

    def spy(self, x, *args, **kwargs):
        passes.append(webui_sim.CALL_LOG[-1].is_hr_pass)
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(CapFace, "residuals", spy)
    return passes


@pytest.mark.parametrize(("passes", "expected"), [("both", {False, True}), ("first", {False}), ("hires", {True})])
def test_a_unit_acts_in_the_passes_it_is_set_to(webui, monkeypatch, passes, expected):
    calls = capface_calls_by_pass(webui, monkeypatch)
    before, steered, p = plain_then_caphuman_then_plain(webui, [unit(webui, passes=passes)], enable_hr=True,
                                                        hr_scale=1.5)
    assert set(calls) == expected
    assert all(c > 1e-3 for c in changed(before, steered))
    assert f"passes {passes}" in p.extra_generation_params["CapHuman 1"]


def test_a_hires_only_unit_without_hires_fix_does_nothing(webui, monkeypatch):
    calls = capface_calls_by_pass(webui, monkeypatch)
    before, steered, p = plain_then_caphuman_then_plain(webui, [unit(webui, passes="hires")])
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(before, steered, strict=True))
    assert "CapHuman 1" not in p.extra_generation_params


def sdxl(webui) -> webui_sim.FakeSDModel:
    model = webui_sim.FakeSDModel(tiny_unet(seed=6), "sdxl-refiner")
    model.is_sd1, model.is_sdxl = False, True
    return model


@pytest.mark.parametrize("end", [0.4, 1.0])
def test_a_refiner_of_another_family_ends_the_unit_at_the_switch(webui, end):
    """SD1.5 base, SDXL refiner at 0.5: the generation completes (the first pass kept), CapHuman acts up to the switch
    and says in the infotext that it ended there, naming the refiner, not the loaded model."""
    refiner = sdxl(webui)
    plain, _ = generate(webui, (), refiner=refiner, refiner_switch_at=0.5, steps=4)
    steered, p = generate(webui, [unit(webui, end=end)], refiner=refiner, refiner_switch_at=0.5, steps=4)
    again, _ = generate(webui, (), refiner=refiner, refiner_switch_at=0.5, steps=4)
    assert all(torch.equal(a, b) for a, b in zip(plain, again, strict=True))
    assert all(c > 1e-3 for c in changed(plain, steered))
    note = p.extra_generation_params.get("CapHuman note", "")
    assert "refiner switch" in note and "the refiner is SDXL" in note and "loaded model" not in note
    assert "CapHuman 1" in p.extra_generation_params
    assert webui_sim.no_caphuman_hooks(webui.base.model.diffusion_model, refiner.model.diffusion_model)


def test_the_model_is_checked_when_sampling_starts_not_at_process(webui):
    """After a job with an SDXL refiner the webui still holds the refiner at the next job's `process`; it loads the
    base before sampling. CapHuman checks the model it will sample, so the next job works."""
    before, _ = generate(webui, (), steps=2)
    generate(webui, (), refiner=sdxl(webui), refiner_switch_at=0.5, steps=2)  # leaves the refiner loaded
    steered, p = generate(webui, [unit(webui)], steps=2)
    assert "CapHuman 1" in p.extra_generation_params
    assert all(c > 1e-3 for c in changed(before, steered))
