"""The Forge adapter: the same residuals as the A1111 hook, and the lifecycle on a harness of Forge's call path
(tests/forge_harness.py) around a real tiny ldm UNet."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from caphuman_ext import UNetHook
from caphuman_ext.hosts import forge
from caphuman_ext.lifecycle import CapHumanError, Generation, full_frame, job
from caphuman_ext.lifecycle.generation import PreparedUnit
from caphuman_ext.rows import RowPlan, chunk_rows
from tests.core_helpers import TINY_CAPFACE, random_capface, reference_eps, tiny_unet
from tests.forge_harness import (
    LATENT,
    DiscreteEps,
    FakeModel,
    FakeP,
    OtherControlNet,
    calc_cond_uncond,
    denoiser_params,
    identity,
    make_generation,
    sampling_prepare,
    unit_params,
)

HOST = forge.HOST


# fixtures ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unet():
    return tiny_unet(seed=1)


@pytest.fixture(scope="module")
def capfaces():
    return random_capface(seed=2), random_capface(seed=3)


def latent_inputs(images: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(images, 4, *LATENT, generator=g)
    text = torch.randn(images, 77, 64, generator=g)
    uncond = torch.randn(images, 77, 64, generator=g)
    return x, text, uncond


def start_generation(p, generation: Generation) -> Generation:
    """What `job.start` leaves on `p` for prepared units (start itself is tested with real unit arguments)."""
    setattr(p, job.ATTRIBUTE, generation)
    job._wrap_sample(p, generation, HOST, lambda params: "CapHuman")
    return generation


# parity with the A1111 hook ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("strengths", [(1.0,), (0.6, 1.4)])
def test_forge_control_adds_what_the_a1111_hook_adds(unet, capfaces, strengths):
    """Same latent, timestep, hint and identity: the UNet output with the Forge control equals the hooked ldm UNet's,
    for cond and uncond rows of two images, and both equal the reference formula."""
    x, text, uncond = latent_inputs()
    sampling = DiscreteEps()
    sigma = sampling.sigma(torch.tensor([700, 700]))
    a1111_generation = make_generation(capfaces, strengths)
    forge_generation = make_generation(capfaces, strengths)

    xc = torch.cat([sampling.calculate_input(sigma, x)] * 2)
    timesteps = torch.cat([sampling.timestep(sigma)] * 2).float()
    context = torch.cat([text, uncond])
    a1111_generation.prepare_pass(full_frame(LATENT), LATENT)
    a1111_generation.engine.plan = RowPlan.fixed([0, 1, 0, 1])
    with torch.no_grad(), UNetHook(unet, a1111_generation.engine):
        hooked = unet(xc, timesteps, context=context)
    a1111_generation.close()

    model = FakeModel(unet)
    forge_generation.prepare_pass(full_frame(LATENT), LATENT, adopt=HOST.adopt)
    HOST.attach(forge_generation, model)
    with torch.no_grad():
        cond_out, uncond_out = calc_cond_uncond(model.forge_objects.unet, x, sigma, [text], uncond)
        plain = unet(xc, timesteps, context=context)
        hint, clip, face = zip(*(identity(seed=10 + i) for i in range(len(strengths))))
        units = [(capfaces[i], hint[i], clip[i], face[i], s, 0) for i, s in enumerate(strengths)]
        expected = reference_eps(unet, xc, timesteps, context, units)

    forged = torch.cat([cond_out, uncond_out])
    assert torch.equal(forged, hooked)
    torch.testing.assert_close(forged, expected, rtol=0, atol=2e-4)
    assert (forged - plain).abs().max() > 1e-3


def test_residual_layout_is_forge_control_order(capfaces):
    residuals = [torch.full((1, 1, 1, 1), float(i)) for i in range(13)]
    control = forge.as_control(residuals)
    unet_order = [control["middle"].pop().item()] + [control["output"].pop().item() for _ in range(12)]
    # A1111 hook: the middle block gets residual 12, output block i gets residual 11 - i
    assert unet_order == [12.0] + [float(11 - i) for i in range(12)]


def test_rows_are_chunks_of_the_batch():
    assert chunk_rows(6, 2) == (0, 1, 0, 1, 0, 1)
    assert chunk_rows(5, 2) is None


# attach logic ------------------------------------------------------------------------------------------------------
def test_attach_clones_composes_with_another_controlnet_and_leaves_pristine_unet(unet, capfaces):
    x, text, uncond = latent_inputs()
    sampling = DiscreteEps()
    sigma = sampling.sigma(torch.tensor([500, 500]))
    xc = sampling.calculate_input(sigma, x)
    with torch.no_grad():
        probe = capfaces[0].residuals(xc, sampling.timestep(sigma).float(),
                                      capfaces[0].identity_context(*identity()[1:]).expand(2, -1, -1),
                                      capfaces[0].hint_features(identity()[0])[0].expand(2, -1, -1, -1))
    extra = [torch.randn(1, *r.shape[1:]) * 0.3 for r in probe]

    model = FakeModel(unet)
    p = FakeP(model)
    generation = start_generation(p, make_generation(capfaces))
    other = OtherControlNet(extra)
    with_other = model.pristine.clone()  # Forge's ControlNet unit attached first (its process_before_every_sampling)
    with_other.add_patched_controlnet(other)
    model.forge_objects.unet = with_other

    job.before_sampling(p, x, HOST)
    patched = model.forge_objects.unet
    assert patched is not with_other and patched is not model.pristine
    assert model.pristine.controlnet_linked_list is None and with_other.controlnet_linked_list is other
    assert [type(c) for c in patched.list_controlnets()] == [forge.CapHumanControl, OtherControlNet]
    sampling_prepare(patched)
    assert other.pre_runs >= 1  # Forge calls pre_run per link and each link also calls its previous one

    with torch.no_grad():
        cond_out, uncond_out = calc_cond_uncond(patched, x, sigma, [text], uncond)
        t = sampling.timestep(sigma).float()
        hint, clip, face = identity()
        expected = reference_eps(unet, xc, t, text, [(capfaces[0], hint, clip, face, 1.0, 0)], extra=extra)
        only_other = calc_cond_uncond(with_other, x, sigma, [text], None)[0]
    torch.testing.assert_close(cond_out, expected, rtol=0, atol=2e-4)
    assert (cond_out - only_other).abs().max() > 1e-3
    assert generation.acted() == [True]

    model.reset()  # the next pass starts from the pristine UNet: nothing of CapHuman there
    assert model.forge_objects.unet.controlnet_linked_list is None
    job.end(p, HOST)  # and a clone someone kept past the job adds only the other ControlNet's residuals
    with torch.no_grad():
        kept = calc_cond_uncond(patched, x, sigma, [text], None)[0]
    assert torch.equal(kept, only_other)


def count_capface_rows(monkeypatch, capface) -> list[int]:
    rows: list[int] = []
    original = capface.residuals

    def counting(x, *args, **kwargs):
        rows.append(x.shape[0])
        return original(x, *args, **kwargs)

    monkeypatch.setattr(capface, "residuals", counting)
    return rows


def test_cond_and_uncond_chunks_share_one_capface_pass(unet, capfaces, monkeypatch):
    """Two AND sub-prompts and the uncond (3 chunks of 2 images) in one call, then one chunk per call: CapFace runs on
    the 2 images only, and every chunk gets the same residuals."""
    x, text, uncond = latent_inputs()
    sigma = DiscreteEps().sigma(torch.tensor([300, 300]))
    model = FakeModel(unet)
    p = FakeP(model)
    start_generation(p, make_generation(capfaces))
    job.before_sampling(p, x, HOST)
    rows = count_capface_rows(monkeypatch, capfaces[0])
    with torch.no_grad():
        together = calc_cond_uncond(model.forge_objects.unet, x, sigma, [text, text], uncond)
        apart = calc_cond_uncond(model.forge_objects.unet, x, sigma, [text, text], uncond, chunks_per_call=1)
    assert rows == [2, 2, 2, 2]
    for a, b in zip(together, apart):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_step_window_and_pose_only_follow_cfg_denoiser_steps(unet, capfaces):
    x, text, uncond = latent_inputs()
    sigma = DiscreteEps().sigma(torch.tensor([400, 400]))
    model = FakeModel(unet)
    p = FakeP(model)
    generation = start_generation(p, make_generation(capfaces, start=0.25, end=0.5, pose_only=0.4))
    job.before_sampling(p, x, HOST)
    patched = model.forge_objects.unet
    with torch.no_grad():
        plain = calc_cond_uncond(model.pristine, x, sigma, [text], None)[0]
        outputs = {}
        for step in (0, 1, 2, 3):
            job.on_step(denoiser_params(p, step, 4), HOST)
            outputs[step] = calc_cond_uncond(patched, x, sigma, [text], None)[0]
    assert torch.equal(outputs[0], plain) and torch.equal(outputs[2], plain) and torch.equal(outputs[3], plain)
    assert (outputs[1] - plain).abs().max() > 1e-3
    control = generation.controls[0]
    assert control.identity_on is True  # step 3 of 4: past the pose-only phase
    job.on_step(denoiser_params(p, 1, 4), HOST)
    assert control.identity_on is False  # step 1 of 4 < 0.4: identity context off, as in A1111


def test_reforge_calls_with_transformer_options_down_the_chain(unet, capfaces):
    """reForge's sampler calls `get_control(x, sigma, cond, chunks, transformer_options)` and reads `extra_hooks`."""
    calls = []

    class ReForgeControlNet(OtherControlNet):
        extra_hooks = "its hooks"

        def get_extra_hooks(self):
            return [self.extra_hooks]

        def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
            calls.append(transformer_options)
            return super().get_control(x_noisy, t, cond, batched_number)

    x, text, _ = latent_inputs()
    model = FakeModel(unet)
    p = FakeP(model)
    start_generation(p, make_generation(capfaces))
    channels = [32] * 4 + [64] * 9  # the tiny UNet's 12 input blocks and its middle block
    other = ReForgeControlNet([torch.zeros(1, c, 1, 1) for c in channels])
    model.forge_objects.unet = model.pristine.clone()
    model.forge_objects.unet.add_patched_controlnet(other)
    job.before_sampling(p, x, HOST)
    control = model.forge_objects.unet.controlnet_linked_list
    sigma = DiscreteEps().sigma(torch.tensor([200, 200]))
    options = {"cond_or_uncond": [0]}
    with torch.no_grad():
        result = control.get_control(x, sigma, {"c_crossattn": text}, 1, options)
    assert calls == [options] and control.transformer_options is options
    assert control.extra_hooks is None and control.get_extra_hooks() == ["its hooks"]
    assert len(result["output"]) == 12 and len(result["middle"]) == 1


def test_hints_rendered_and_sampled_in_inference_mode(unet, capfaces):
    """Forge runs processing under `torch.inference_mode()`: hints rendered there, sampled there, twice."""
    x, text, _ = latent_inputs()
    sigma = DiscreteEps().sigma(torch.tensor([500, 500]))
    model = FakeModel(unet)
    p = FakeP(model)
    generation = start_generation(p, make_generation(capfaces))
    render = generation.render
    generation.render = lambda params, width, height: render(params, width, height).clone()  # made in the mode
    with torch.inference_mode():
        job.before_sampling(p, x, HOST)
        first = calc_cond_uncond(model.forge_objects.unet, x, sigma, [text], None)[0]
        model.reset()
        job.before_sampling(p, x, HOST)  # the next pass: the same cached hint
        second = calc_cond_uncond(model.forge_objects.unet, x, sigma, [text], None)[0]
        plain = calc_cond_uncond(model.pristine, x, sigma, [text], None)[0]
    assert torch.equal(first, second) and (first - plain).abs().max() > 1e-3


def test_refiner_switch_attaches_to_the_new_unet(unet, capfaces):
    x, _, _ = latent_inputs()
    model = FakeModel(unet)
    p = FakeP(model)
    generation = start_generation(p, make_generation(capfaces))
    job.before_sampling(p, x, HOST)
    refiner = FakeModel(tiny_unet(seed=7))
    job.on_step(denoiser_params(p, 2, 4, model=refiner), HOST)
    assert HOST.attached(generation, refiner)
    assert refiner.pristine.controlnet_linked_list is None


def test_capface_patchers_join_forge_memory_management(unet, capfaces, monkeypatch):
    made = []

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device):
            self.model = model
            model.device = load_device  # as reForge's (ComfyUI's) ModelPatcher does on load and unload
            made.append(self)

    monkeypatch.setattr(forge, "_patcher_class", lambda: ModelPatcher)
    x, _, _ = latent_inputs()
    model = FakeModel(unet)
    p = FakeP(model)
    start_generation(p, make_generation(capfaces, strengths=(1.0, 0.5)))
    job.before_sampling(p, x, HOST)
    loaded = sampling_prepare(model.forge_objects.unet)
    model.reset()
    job.before_sampling(p, x, HOST)  # the hires pass: the same patchers, not new ones
    loaded_again = sampling_prepare(model.forge_objects.unet)
    assert [m.model.capface for m in loaded[1:]] == list(capfaces[:2])
    assert loaded_again[1:] == loaded[1:] and len(made) == 2


# errors --------------------------------------------------------------------------------------------------------------
def test_error_while_attaching_stops_sampling_readably_and_plain_run_after_is_identical(unet, capfaces):
    x, text, uncond = latent_inputs()
    sigma = DiscreteEps().sigma(torch.tensor([600, 600]))
    model = FakeModel(unet)
    with torch.no_grad():
        before = calc_cond_uncond(model.forge_objects.unet, x, sigma, [text], uncond)
    p = FakeP(model)
    generation = start_generation(p, make_generation(capfaces, render_error=ValueError("the pose photo is empty")))
    job.before_sampling(p, x, HOST)  # the webui swallows callback errors: the control raises it from sampling
    with pytest.raises(CapHumanError, match="CapHuman: the pose photo is empty"), torch.no_grad():
        calc_cond_uncond(model.forge_objects.unet, x, sigma, [text], uncond)
    assert generation.error == "CapHuman: the pose photo is empty"
    job.end(p, HOST)
    model.reset()
    with torch.no_grad():
        after = calc_cond_uncond(model.forge_objects.unet, x, sigma, [text], uncond)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_tiled_latent_is_refused_readably(unet, capfaces):
    x, text, _ = latent_inputs()
    model = FakeModel(unet)
    p = FakeP(model)
    start_generation(p, make_generation(capfaces))
    job.before_sampling(p, x, HOST)
    tile = x[..., :4, :4]
    with pytest.raises(CapHumanError, match="Tiled sampling"), torch.no_grad():
        calc_cond_uncond(model.forge_objects.unet, tile, DiscreteEps().sigma(torch.tensor([9, 9])), [text], None)


def test_a_capface_that_does_not_fit_forge_unet_is_refused_when_sampling_starts(unet):
    """The model is checked when sampling starts (at `process` the webui may still hold the last job's refiner):
    a readable error, raised from Forge's sampling and from the next `p.sample`."""
    import numpy as np

    from caphuman_ext import CapFaceConfig

    wrong = random_capface(CapFaceConfig(model_channels=32, channel_mult=(1, 1, 2, 2), num_res_blocks=(2, 2, 2, 2),
                                         attention_levels=(0, 1, 2), context_dim=64), seed=4)
    model = FakeModel(unet)
    p = FakeP(model)
    args = [{"enabled": True, "reference_images": [np.zeros((8, 8, 3), np.uint8)]}]
    generation = job.start(p, args, HOST, job.PlainServices(
        prepare=lambda unit, position: PreparedUnit(unit, wrong, None, position), render=lambda *a: None, offload=False))
    assert generation.error is None
    job.before_sampling(p, torch.zeros(1, 4, *LATENT), HOST)
    assert generation.error is not None and "does not fit the loaded checkpoint's UNet" in generation.error
    with pytest.raises(CapHumanError, match="does not fit"), torch.no_grad():
        calc_cond_uncond(model.forge_objects.unet, torch.zeros(1, 4, *LATENT), torch.ones(1), [torch.zeros(1, 77, 64)],
                         None)
    with pytest.raises(CapHumanError, match="does not fit"):
        p.sample()


def test_detected_only_where_modules_forge_is_importable(tmp_path, monkeypatch):
    assert not forge.detected()
    (tmp_path / "modules_forge").mkdir()
    (tmp_path / "modules_forge" / "__init__.py").write_text("")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    assert forge.detected()


def test_capface_builds_from_forge_neo_blocks(monkeypatch):
    """Forge Neo has no `ldm`: CapFace is built from `backend.nn.unet`, which has ldm's blocks under ldm's names (here
    ldm's own modules stand in for it) and loads the same state dict."""
    from ldm.modules import attention
    from ldm.modules.diffusionmodules import openaimodel, util

    from caphuman_ext import blocks
    from caphuman_ext import capface as capface_module

    neo_unet = SimpleNamespace(**{name: getattr(openaimodel, name) for name in
                                  ("TimestepEmbedSequential", "ResBlock", "Downsample")},
                               SpatialTransformer=attention.SpatialTransformer, conv_nd=util.conv_nd)
    backend = SimpleNamespace(nn=SimpleNamespace(unet=neo_unet))
    monkeypatch.setitem(sys.modules, "backend", backend)
    monkeypatch.setitem(sys.modules, "backend.nn", backend.nn)
    monkeypatch.setitem(sys.modules, "backend.nn.unet", neo_unet)
    monkeypatch.setattr(capface_module, "ldm_blocks", blocks.backend_blocks)
    built = capface_module.CapFace(TINY_CAPFACE)
    assert built.state_dict().keys() == random_capface().state_dict().keys()


def test_script_dispatches_to_the_forge_adapter_only_in_forge(tmp_path, monkeypatch):
    from caphuman_ext.hosts import a1111
    from tests import webui_sim

    saved = {k: v for k, v in sys.modules.items() if k == "modules" or k.startswith("modules.")}
    try:
        webui_sim.install_fake_webui(tmp_path)
        assert webui_sim.load_script_module().host is a1111.HOST
        (tmp_path / "modules_forge").mkdir()
        (tmp_path / "modules_forge" / "__init__.py").write_text("")
        monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
        script = webui_sim.load_script_module()
        assert script.host is forge.HOST
        assert webui_sim.CALLBACKS["on_cfg_denoiser"][-1] is script.on_cfg_denoiser
    finally:
        for key in [k for k in sys.modules if k == "modules" or k.startswith("modules.")]:
            del sys.modules[key]
        sys.modules.update(saved)


# where CapHuman acts in Forge: the steerable CapFace (tests/steerable.py) -------------------------------------------
def test_forge_path_puts_the_change_where_the_head_is(unet):
    """Forge's chain, two images, cond and uncond in one call: the change of the UNet output sits inside the head
    (more than twice the change outside), and moves with it."""
    from tests.steerable import hint_coverage, sphere_hint, steerable_capface

    capface = steerable_capface(unet)
    x, text, uncond = latent_inputs()
    sigma = DiscreteEps().sigma(torch.tensor([500, 500]))
    centroids = []
    for center_x in (0.25, 0.75):
        hint = sphere_hint(LATENT[1] * 8, LATENT[0] * 8, center_x=center_x, radius=0.22)
        with torch.no_grad():
            context = capface.identity_context(*identity()[1:])
        generation = Generation([PreparedUnit(unit_params(), capface, context)], render=lambda *_, hint=hint: hint)
        model = FakeModel(unet)
        p = FakeP(model)
        start_generation(p, generation)
        job.before_sampling(p, x, HOST)
        job.on_step(denoiser_params(p, 0, 4), HOST)
        with torch.no_grad():
            steered = calc_cond_uncond(model.forge_objects.unet, x, sigma, [text], uncond)
            plain = calc_cond_uncond(model.pristine, x, sigma, [text], uncond)
        job.end(p, HOST)
        head = torch.nn.functional.avg_pool2d(hint_coverage(hint), 8)[0, 0] > 0.5
        for s, q in zip(steered, plain):
            change = (s - q).abs().mean(dim=(0, 1))
            assert change[head].mean() > 2 * change[~head].mean()
        change = (steered[0] - plain[0]).abs().mean(dim=(0, 1))
        centroids.append(float((change.sum(0) * torch.arange(LATENT[1])).sum() / change.sum()))
    assert centroids[1] - centroids[0] > 0.15 * LATENT[1]


def test_forge_path_acts_in_the_passes_the_unit_is_set_to(unet, capfaces):
    x, text, _ = latent_inputs()
    sigma = DiscreteEps().sigma(torch.tensor([500, 500]))
    model = FakeModel(unet)
    with torch.no_grad():
        plain = calc_cond_uncond(model.pristine, x, sigma, [text], None)[0]
    for passes, acts in (("first", (True, False)), ("hires", (False, True)), ("both", (True, True))):
        p = FakeP(model)
        start_generation(p, make_generation(capfaces, passes=passes))
        for hires, expected in zip((False, True), acts, strict=True):
            p.is_hr_pass = hires
            model.reset()
            job.before_sampling(p, x, HOST)
            job.on_step(denoiser_params(p, 0, 4), HOST)
            with torch.no_grad():
                out = calc_cond_uncond(model.forge_objects.unet, x, sigma, [text], None)[0]
            assert (not torch.equal(out, plain)) == expected, (passes, hires)
        job.end(p, HOST)


def test_forge_unet_input_is_made_in_the_captured_pass_and_follows_the_schedule(unet, capfaces):
    """The UNet's input and timesteps (Forge's `calculate_input` / `timestep` of sigma) are made inside the captured
    CapFace pass: a graph is captured anew when the schedule's tensors change (in place or replaced), and each
    result equals the A1111 hook's with the input made outside, bit for bit."""
    from tests.core_helpers import ReplayOnCpu

    graphs = ReplayOnCpu(max_graphs=8)
    x, text, uncond = latent_inputs()
    model = FakeModel(unet)
    sampling = model.forge_objects.unet.model.model_sampling
    captures = []
    for change in ("none", "same again", "in place", "replaced"):
        if change == "in place":
            sampling.log_sigmas.mul_(1.0001)
        elif change == "replaced":
            sampling.log_sigmas = sampling.log_sigmas.clone() - 0.01
        sigma = sampling.sigma(torch.tensor([700, 700]))
        forge_generation, a1111_generation = make_generation(capfaces), make_generation(capfaces)
        forge_generation.graphs = forge_generation.engine.graphs = graphs
        forge_generation.prepare_pass(full_frame(LATENT), LATENT, adopt=HOST.adopt)
        HOST.attach(forge_generation, model)
        with torch.no_grad():
            cond_out, uncond_out = calc_cond_uncond(model.forge_objects.unet, x, sigma, [text], uncond)
        forge_generation.close()
        model.reset()
        xc = torch.cat([sampling.calculate_input(sigma, x)] * 2)
        timesteps = torch.cat([sampling.timestep(sigma)] * 2).float()
        a1111_generation.prepare_pass(full_frame(LATENT), LATENT)
        a1111_generation.engine.plan = RowPlan.fixed([0, 1, 0, 1])
        with torch.no_grad(), UNetHook(unet, a1111_generation.engine):
            hooked = unet(xc, timesteps, context=torch.cat([text, uncond]))
        a1111_generation.close()
        assert torch.equal(torch.cat([cond_out, uncond_out]), hooked), change
        captures.append(graphs.captures)
    assert captures == [1, 1, 2, 3]


def test_sampling_key_vouches_only_for_tensors_and_plain_values():
    sampling = DiscreteEps()
    key = forge.sampling_key(sampling)
    assert key is not None and key[0] is sampling and forge.sampling_key(sampling) == key
    sampling.log_sigmas.add_(0.0)  # modified in place: another key
    assert forge.sampling_key(sampling) != key
    sampling.schedule = object()  # something it cannot vouch for: the input is made outside the graph
    assert forge.sampling_key(sampling) is None
    with torch.inference_mode():
        inference = DiscreteEps()
    assert forge.sampling_key(inference) is None
