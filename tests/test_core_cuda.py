"""GPU-only checks of the hook: CUDA-graph replay equals the reference, and the per-step path makes no host sync."""

from __future__ import annotations

import pytest
import torch

import caphuman_ext
from caphuman_ext.rows import RowPlan
from tests.core_helpers import random_capface, reference_eps, tiny_unet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def setup():
    unet = tiny_unet(seed=1).cuda()
    capface = random_capface(seed=2).cuda()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 24, generator=g).repeat(2, 1, 1, 1).cuda()
    text = torch.randn(2, 77, 64, generator=g).cuda()
    hint = (torch.rand(1, 9, 128, 192, generator=g) * 2 - 1).cuda()
    clip = torch.randn(1, 257, 1024, generator=g).cuda()
    face = torch.randn(1, 1, 512, generator=g).cuda()
    return unet, capface, x, text, hint, clip, face


@pytest.mark.parametrize("tau", [0.0, 500.0])
def test_graph_replay_matches_reference_every_step(tau):
    unet, capface, x, text, hint, clip, face = setup()
    control = caphuman_ext.CapFaceControl(capface, hint=hint, context=capface.identity_context(clip, face),
                                          strength=0.9, drop_identity_above_t=tau)
    with torch.no_grad(), caphuman_ext.hook_unet(unet, [control], rows=RowPlan.fixed([0, 0])) as hook:
        for t in (950.0, 700.0, 400.0, 50.0):
            timesteps = torch.full((2,), t, device="cuda")
            got = unet(x, timesteps, context=text)
            hook.detach()
            expected = reference_eps(unet, x, timesteps, text, [(capface, hint, clip, face, 0.9, tau)])
            hook.install()
            assert (got - expected).abs().max().item() <= 2e-4
        assert hook.graphs.calls and hook.graphs.disabled_reason is None


@pytest.mark.parametrize("graphs", [False, True])
def test_per_step_path_makes_no_host_sync(graphs):
    unet, capface, x, text, hint, clip, face = setup()
    control = caphuman_ext.CapFaceControl(capface, hint=hint, context=capface.identity_context(clip, face),
                                          drop_identity_above_t=500.0)
    with torch.no_grad(), caphuman_ext.hook_unet(unet, [control], rows=RowPlan.fixed([0, 0]), cuda_graphs=graphs):
        # registered after ours, so it runs after our pre-hook: only our per-step work is checked
        stop = unet.register_forward_pre_hook(lambda *args: torch.cuda.set_sync_debug_mode(0))
        try:
            unet(x, torch.full((2,), 900.0, device="cuda"), context=text)  # first step: per-generation setup
            torch.cuda.synchronize()
            for t in (700.0, 300.0):
                torch.cuda.set_sync_debug_mode("error")
                unet(x, torch.full((2,), t, device="cuda"), context=text)
        finally:
            torch.cuda.set_sync_debug_mode(0)
            stop.remove()


def test_replacing_the_hint_recaptures():
    unet, capface, x, text, hint, clip, face = setup()
    control = caphuman_ext.CapFaceControl(capface, hint=hint, context=capface.identity_context(clip, face))
    timesteps = torch.full((2,), 500.0, device="cuda")
    with torch.no_grad(), caphuman_ext.hook_unet(unet, [control], rows=RowPlan.fixed([0, 0])) as hook:
        unet(x, timesteps, context=text)
        control.hint = torch.flip(hint, dims=[-1])  # same shape, new content
        got = unet(x, timesteps, context=text)
        hook.detach()
        expected = reference_eps(unet, x, timesteps, text, [(capface, control.hint, clip, face, 1.0, 0.0)])
        hook.install()
    assert (got - expected).abs().max().item() <= 2e-4


def forge_setup():
    """A CUDA Forge chain (tests/forge_harness.py) with one CapHuman unit attached through the lifecycle."""
    from caphuman_ext.hosts import forge
    from caphuman_ext.lifecycle import Generation, job
    from caphuman_ext.lifecycle.generation import PreparedUnit
    from tests.forge_harness import FakeModel, FakeP

    unet, capface, x, text, hint, clip, face = setup()
    params = type("Params", (), {"strength": 0.9, "start": 0.0, "end": 1.0, "pose_only": 0.0})()
    with torch.no_grad():
        context = capface.identity_context(clip, face)
    generation = Generation([PreparedUnit(params, capface, context)], render=lambda *_: hint)
    model = FakeModel(unet)
    model.pristine.load_device = model.pristine.offload_device = torch.device("cuda")
    sampling = model.pristine.model.model_sampling
    sampling.log_sigmas = sampling.log_sigmas.cuda()  # Forge keeps its schedule on the device
    p = FakeP(model)
    p.width, p.height = 192, 128
    setattr(p, job.ATTRIBUTE, generation)
    job.before_sampling(p, x[:1], forge.HOST)
    return unet, capface, x[:1], text[:1], hint, clip, face, model, p, forge.HOST


def test_forge_path_on_cuda_matches_the_reference_with_graphs_and_overlap():
    from caphuman_ext.lifecycle import job
    from tests.forge_harness import calc_cond_uncond, denoiser_params

    unet, capface, x, text, hint, clip, face, model, p, host = forge_setup()
    sampling = model.pristine.model.model_sampling
    uncond = torch.zeros_like(text)
    for step, t in enumerate((900, 600, 300, 50)):  # the first calls wait at once, later ones before the middle
        job.on_step(denoiser_params(p, step, 4), host)
        sigma = sampling.sigma(torch.tensor([t], device="cuda"))
        with torch.no_grad():
            got = torch.cat(calc_cond_uncond(model.forge_objects.unet, x, sigma, [text], uncond))
            xc = torch.cat([sampling.calculate_input(sigma, x)] * 2)
            ts = torch.cat([sampling.timestep(sigma)] * 2).float()
            expected = reference_eps(unet, xc, ts, torch.cat([text, uncond]), [(capface, hint, clip, face, 0.9, 0)])
        assert (got - expected).abs().max().item() <= 2e-4
    control = model.forge_objects.unet.controlnet_linked_list
    assert control._modifier_runs and control.generation.graphs.calls


def test_forge_path_makes_no_host_sync():
    from caphuman_ext.lifecycle import job
    from tests.forge_harness import calc_cond_uncond, denoiser_params

    _, _, x, text, _, _, _, model, p, host = forge_setup()
    sampling = model.pristine.model.model_sampling
    sigmas = [sampling.sigma(torch.tensor([t], device="cuda")) for t in (900, 700, 300)]
    uncond = torch.zeros_like(text)
    with torch.no_grad():
        job.on_step(denoiser_params(p, 0, 3), host)
        calc_cond_uncond(model.forge_objects.unet, x, sigmas[0], [text], uncond)  # first step: per-generation setup
        torch.cuda.synchronize()
        control = model.forge_objects.unet.controlnet_linked_list
        original = control.get_control

        def checked(*args, **kwargs):  # only CapHuman's per-step work is checked, not the harness around it
            torch.cuda.set_sync_debug_mode("error")
            try:
                return original(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(0)

        control.get_control = checked
        for step, sigma in enumerate(sigmas[1:], start=1):
            job.on_step(denoiser_params(p, step, 3), host)
            calc_cond_uncond(model.forge_objects.unet, x, sigma, [text], uncond)


def test_half_capface_runs_without_autocast_as_forge_samples():
    """Forge samples without autocast (its UNet is cast manually): a half-precision CapFace's pass runs there too
    (ldm's GroupNorm32 normalises in float32, which half weights refuse outside autocast) and gives exactly what it
    gives under the webui's autocast."""
    from caphuman_ext.engine import ResidualEngine

    _, capface, x, _, hint, clip, face = setup()
    with torch.no_grad():
        context = capface.identity_context(clip, face)
    capface = capface.half()
    control = caphuman_ext.CapFaceControl(capface, hint=hint, context=context, strength=0.9)
    timesteps = torch.full((2,), 500.0, device="cuda")
    results = []
    for autocast in (False, True):
        engine = ResidualEngine([control], cuda_graphs=False, overlap=False)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
            results.append(engine.compute(x, timesteps, torch.float16).residuals)
    for without, under in zip(*results, strict=True):
        assert without.dtype == torch.float16 and torch.isfinite(without).all()
        assert torch.equal(without, under)
