"""The UNet hook: every reference semantic, batching, de-duplication, composition and leak-freedom."""

from __future__ import annotations

import pytest
import torch

import caphuman_ext
from caphuman_ext.rows import RowPlan
from tests.core_helpers import TINY_CAPFACE, random_capface, reference_eps, tiny_unet


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(seed=1)


@pytest.fixture(scope="module")
def capfaces():
    return random_capface(seed=2), random_capface(seed=3)


def inputs(rows: int, size=(16, 16), seed: int = 0, float_t: bool = False):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    x = torch.randn(rows, 4, h, w, generator=g)
    t = torch.rand(rows, generator=g) * 999 if float_t else torch.randint(0, 1000, (rows,), generator=g)
    text = torch.randn(rows, 77, 64, generator=g)
    return x, t, text


def identity(rows: int, size=(16, 16), seed: int = 10):
    g = torch.Generator().manual_seed(seed)
    hint = torch.rand(rows, 9, size[0] * 8, size[1] * 8, generator=g) * 2 - 1
    clip = torch.randn(rows, 257, 1024, generator=g)
    face = torch.nn.functional.normalize(torch.randn(rows, 1, 512, generator=g), dim=-1)
    return hint, clip, face


def hooked_eps(unet, units, x, t, text, row_sources=None):
    controls = []
    for capface, hint, clip, face, strength, tau in units:
        ctx = capface.identity_context(clip, face)
        controls.append(caphuman_ext.CapFaceControl(capface, hint=hint, context=ctx, strength=strength,
                                                    drop_identity_above_t=tau))
    rows = None if row_sources is None else RowPlan.fixed(row_sources)
    with torch.no_grad(), caphuman_ext.hook_unet(unet, controls, rows=rows):
        return unet(x, t, context=text)


def assert_close(a, b, tol=2e-4):
    assert (a - b).abs().max().item() <= tol, (a - b).abs().max().item()


@pytest.mark.parametrize("strength", [0.35, 1.0, 1.7])
def test_strength(unet, capfaces, strength):
    x, t, text = inputs(2)
    hint, clip, face = identity(2)
    units = [(capfaces[0], hint, clip, face, strength, 0)]
    with torch.no_grad():
        expected = reference_eps(unet, x, t, text, units)
    assert_close(hooked_eps(unet, units, x, t, text), expected)


def test_non_square_latent_with_float_timesteps(unet, capfaces):
    x, t, text = inputs(3, size=(16, 24), float_t=True)
    hint, clip, face = identity(3, size=(16, 24))
    units = [(capfaces[0], hint, clip, face, 0.8, 0)]
    with torch.no_grad():
        expected = reference_eps(unet, x, t, text, units)
    assert_close(hooked_eps(unet, units, x, t, text), expected)


def test_tau_zeroes_identity_above_threshold(unet, capfaces):
    x, _, text = inputs(4)
    t = torch.tensor([900, 600, 400, 100])
    hint, clip, face = identity(4)
    units = [(capfaces[0], hint, clip, face, 1.0, 500)]
    with torch.no_grad():
        expected = reference_eps(unet, x, t, text, units)
        without_tau = reference_eps(unet, x, t, text, [(capfaces[0], hint, clip, face, 1.0, 0)])
    got = hooked_eps(unet, units, x, t, text)
    assert_close(got, expected)
    # rows with t <= tau see the identity, rows above do not
    assert_close(got[2:], without_tau[2:], tol=1e-5)
    assert (got[:2] - without_tau[:2]).abs().max() > 1e-3


def test_two_identities_each_masked_and_summed(unet, capfaces):
    x, t, text = inputs(2)
    a = identity(2, seed=20)
    b = identity(2, seed=21)
    units = [(capfaces[0], *a, 1.0, 0), (capfaces[1], *b, 0.6, 300)]
    with torch.no_grad():
        expected = reference_eps(unet, x, t, text, units)
    assert_close(hooked_eps(unet, units, x, t, text), expected)


def test_batch_one_conditioning_broadcasts_to_every_row(unet, capfaces):
    x, t, text = inputs(3)
    hint, clip, face = identity(1)
    one = hooked_eps(unet, [(capfaces[0], hint, clip, face, 1.0, 0)], x, t, text)
    per_row = hooked_eps(unet, [(capfaces[0], hint.expand(3, -1, -1, -1), clip.expand(3, -1, -1),
                                 face.expand(3, -1, -1), 1.0, 0)], x, t, text)
    assert_close(one, per_row, tol=1e-6)


def test_shared_rows_compute_once_and_equal_every_row(unet, capfaces):
    # the webui layout: cond rows then uncond rows of the same latents and timesteps
    x, t, text = inputs(2)
    x, t = torch.cat([x, x]), torch.cat([t, t])
    text = torch.cat([text, torch.randn_like(text)])
    hint, clip, face = identity(1)
    units = [(capfaces[0], hint, clip, face, 1.0, 0)]
    calls = []
    handle = capfaces[0].time_embed.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        every_row = hooked_eps(unet, units, x, t, text)
        shared = hooked_eps(unet, units, x, t, text, row_sources=[0, 1, 0, 1])
    finally:
        handle.remove()
    assert calls == [4, 2]
    assert (every_row - shared).abs().max().item() <= 1e-6


def test_shared_rows_with_per_row_conditioning(unet, capfaces):
    x, t, text = inputs(2)
    x, t = torch.cat([x, x]), torch.cat([t, t])
    text = torch.randn(4, 77, 64)
    hint, clip, face = identity(2)
    hint, clip, face = torch.cat([hint, hint]), torch.cat([clip, clip]), torch.cat([face, face])
    units = [(capfaces[0], hint, clip, face, 1.0, 0)]
    every_row = hooked_eps(unet, units, x, t, text)
    shared = hooked_eps(unet, units, x, t, text, row_sources=[0, 1, 0, 1])
    assert (every_row - shared).abs().max().item() <= 1e-6


def test_no_capface_work_when_strength_zero_or_inactive(unet, capfaces):
    x, t, text = inputs(2)
    hint, clip, face = identity(1)
    capface = capfaces[0]
    calls = []
    handle = capface.time_embed.register_forward_hook(lambda *a: calls.append(1))
    try:
        control = caphuman_ext.CapFaceControl(capface, hint=hint, context=capface.identity_context(clip, face),
                                              strength=0.0)
        with torch.no_grad():
            bare = unet(x, t, context=text)
            with caphuman_ext.hook_unet(unet, [control]):
                zero = unet(x, t, context=text)
                control.strength, control.active = 1.0, False
                inactive = unet(x, t, context=text)
    finally:
        handle.remove()
    assert calls == []
    assert torch.equal(zero, bare) and torch.equal(inactive, bare)


def test_inpainting_unet_feeds_first_four_channels(capfaces):
    unet9 = tiny_unet(seed=4, in_channels=9)
    x4, t, text = inputs(2)
    x = torch.cat([x4, torch.randn(2, 5, 16, 16)], 1)
    hint, clip, face = identity(1)
    capface = capfaces[0]
    got = hooked_eps(unet9, [(capface, hint, clip, face, 1.0, 0)], x, t, text)
    with torch.no_grad():
        bare = unet9(x, t, context=text)
        control = caphuman_ext.CapFaceControl(capface, hint=hint, context=capface.identity_context(clip, face))
        residuals = control.residuals(x4, t)
        manual = control.residuals(x, t)
    assert all(torch.equal(a, b) for a, b in zip(residuals, manual))
    assert (got - bare).abs().max() > 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="ldm's GroupNorm32 needs CUDA autocast for half weights")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_follows_the_unet(unet, capfaces, dtype):
    import copy

    unet = copy.deepcopy(unet).cuda()
    capfaces = [copy.deepcopy(c) for c in capfaces]
    x, t, text = inputs(2)
    hint, clip, face = identity(1)
    units = [(capfaces[0], hint, clip, face, 1.0, 0)]

    full = hooked_eps(unet, units, x.cuda(), t.cuda(), text.cuda()).cpu()
    half_unet = copy.deepcopy(unet).to(dtype)
    half_unet.dtype = dtype
    half_capface = copy.deepcopy(capfaces[0])  # fp32 on the CPU: the hook moves it to the UNet's device and dtype
    with torch.autocast("cuda", dtype=dtype):  # the webui runs half-precision UNets under autocast
        half = hooked_eps(half_unet, [(half_capface, hint, clip, face, 1.0, 0)], x.cuda().to(dtype), t.cuda(),
                          text.cuda().to(dtype)).cpu()
    assert half_capface.dtype == dtype and half_capface.device.type == "cuda"
    assert half.dtype == dtype
    assert (half.float() - full).abs().mean() < 0.05 * full.abs().mean()


def replace_forward_with_extra_residuals(unet, extra):
    """Mimic sd-webui-controlnet: replace `unet.forward` with a loop that adds its own residuals."""
    from ldm.modules.diffusionmodules.util import timestep_embedding

    def forward(self, x, timesteps=None, context=None, **kwargs):
        residuals = list(extra)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False))
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        h = h + residuals.pop()
        for module in self.output_blocks:
            h = torch.cat([h, hs.pop() + residuals.pop()], dim=1)
            h = module(h, emb, context)
        return self.out(h)

    unet.forward = forward.__get__(unet)


def test_composes_with_a_replaced_forward(capfaces):
    unet = tiny_unet(seed=5)
    x, t, text = inputs(2)
    hint, clip, face = identity(1)
    units = [(capfaces[0], hint, clip, face, 1.0, 0)]
    with torch.no_grad():
        probe = capfaces[0].residuals(x, t, capfaces[0].identity_context(clip, face).expand(2, -1, -1),
                                      capfaces[0].hint_features(hint)[0].expand(2, -1, -1, -1))
        extra = [torch.randn_like(r) * 0.3 for r in probe]
        expected = reference_eps(unet, x, t, text, units, extra=extra)
    replace_forward_with_extra_residuals(unet, extra)
    got = hooked_eps(unet, units, x, t, text)
    assert_close(got, expected)
    with torch.no_grad():
        only_other = unet(x, t, context=text)
    assert (got - only_other).abs().max() > 1e-3  # both controls apply


def test_exception_inside_unet_leaves_no_hook(capfaces):
    unet = tiny_unet(seed=6)
    x, t, text = inputs(2)
    hint, clip, face = identity(1)
    with torch.no_grad():
        before = unet(x, t, context=text)
    control = caphuman_ext.CapFaceControl(capfaces[0], hint=hint,
                                          context=capfaces[0].identity_context(clip, face))

    def boom(module, args):
        raise RuntimeError("interrupted")

    handle = unet.output_blocks[5].register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="interrupted"), torch.no_grad():
        with caphuman_ext.hook_unet(unet, [control]) as hook:
            unet(x, t, context=text)
    handle.remove()
    assert not hook.installed
    for module in unet.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    with torch.no_grad():
        after = unet(x, t, context=text)
    assert torch.equal(before, after)


def test_incompatible_unet_is_refused_before_hooking():
    capface = random_capface(TINY_CAPFACE, seed=7)
    other = tiny_unet(seed=8, channel_mult=[1, 2, 2])
    control = caphuman_ext.CapFaceControl(capface, hint=torch.zeros(1, 9, 64, 64), context=torch.zeros(1, 258, 64))
    with pytest.raises(caphuman_ext.IncompatibleUNetError, match="SD1"):
        caphuman_ext.hook_unet(other, [control])
    assert not any(m._forward_pre_hooks for m in other.modules())


def test_hint_of_wrong_size_is_a_clear_error(unet, capfaces):
    x, t, text = inputs(1)
    control = caphuman_ext.CapFaceControl(capfaces[0], hint=torch.zeros(1, 9, 64, 64),
                                          context=torch.zeros(1, 258, 64))
    with pytest.raises(ValueError, match="this sampling pass is"), torch.no_grad():
        with caphuman_ext.hook_unet(unet, [control]):
            unet(x, t, context=text)
    assert not any(m._forward_pre_hooks for m in unet.modules())
