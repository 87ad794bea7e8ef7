"""GPU-only checks of the hook: CUDA-graph replay equals the reference, and the per-step path makes no host sync."""

from __future__ import annotations

import pytest
import torch

import caphuman_ext
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
    with torch.no_grad(), caphuman_ext.hook_unet(unet, [control], row_sources=[0, 0]) as hook:
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
    with torch.no_grad(), caphuman_ext.hook_unet(unet, [control], row_sources=[0, 0], cuda_graphs=graphs):
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
    with torch.no_grad(), caphuman_ext.hook_unet(unet, [control], row_sources=[0, 0]) as hook:
        unet(x, timesteps, context=text)
        control.hint = torch.flip(hint, dims=[-1])  # same shape, new content
        got = unet(x, timesteps, context=text)
        hook.detach()
        expected = reference_eps(unet, x, timesteps, text, [(capface, control.hint, clip, face, 1.0, 0.0)])
        hook.install()
    assert (got - expected).abs().max().item() <= 2e-4
