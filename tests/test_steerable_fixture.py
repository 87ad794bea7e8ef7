"""The steerable CapFace (tests/steerable.py) on hints rendered by the real head pipeline, hooked into a real ldm UNet:
its mask is the head, its residuals live inside the head, and moving or turning the head moves or changes the UNet's
output. Every test also runs against a random CapFace, where it must fail (strict xfail): the mask of a random
CapFace is ~0.5 everywhere, so its residuals cover the whole frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import caphuman_ext
from caphuman_ext.control import hard_mask
from preprocessors.head.assets import HeadAssets
from preprocessors.head.pipeline import HeadPipeline, ManualHead
from tests.core_helpers import random_capface, tiny_unet
from tests.steerable import capface_config_for, hint_coverage, save_steerable_checkpoint, sphere_hint, steerable_capface

PIXELS = 128  # hint size; the latent is 16x16
LATENT = PIXELS // 8
HEAD_SCALE = 0.6


@pytest.fixture(scope="module")
def render(deca_assets):
    pipeline = HeadPipeline(HeadAssets.find([deca_assets]), deca_size=256)
    photo, landmarks = Image.open(deca_assets / "identity.png"), np.loadtxt(deca_assets / "identity.txt")

    def render(**sliders):
        return pipeline.render(photo, None, width=PIXELS, height=PIXELS, identity_landmarks=landmarks,
                               manual=ManualHead(scale=HEAD_SCALE, **sliders))

    return render


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(seed=1)


@pytest.fixture(scope="module", params=[
    "steerable",
    pytest.param("random", marks=pytest.mark.xfail(raises=AssertionError, strict=True,
                                                   reason="a random CapFace does not follow the head")),
])
def capface(request, unet):
    if request.param == "random":
        return random_capface(capface_config_for(unet), seed=2)
    return steerable_capface(unet)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, LATENT, LATENT, generator=g)
    text = torch.randn(1, 77, 64, generator=g)
    clip = torch.randn(1, 257, 1024, generator=g)
    face = F.normalize(torch.randn(1, 1, 512, generator=g), dim=-1)
    return x, torch.tensor([500]), text, clip, face


def head_region(result, grow: int = 0) -> torch.Tensor:
    """Latent pixels the head touches (any coverage), grown by `grow` pixels: (LATENT, LATENT) bool."""
    touched = F.max_pool2d(result.maps.alpha, 8)
    if grow:
        touched = F.max_pool2d(touched, 2 * grow + 1, 1, grow)
    return touched[0, 0] > 0


def run(unet, capface, hint, inputs, face=None):
    """(hooked eps, the 13 masked residuals the hook adds) for one identity."""
    x, t, text, clip, default_face = inputs
    context = capface.identity_context(clip, default_face if face is None else face)
    control = caphuman_ext.CapFaceControl(capface, hint=hint, context=context)
    with torch.no_grad(), caphuman_ext.hook_unet(unet, [control]):
        eps = unet(x, t, context=text)
    with torch.no_grad():
        return eps, control.residuals(x, t)


def plain(unet, inputs):
    x, t, text, *_ = inputs
    with torch.no_grad():
        return unet(x, t, context=text)


def change_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| summed over channels: (LATENT, LATENT)."""
    return (a - b).abs().sum(1)[0]


def contrast(change: torch.Tensor, region: torch.Tensor) -> float:
    """Mean change per pixel inside `region` over the mean outside it."""
    return (change[region].mean() / change[~region].mean().clamp_min(1e-12)).item()


def centroid_x(weights: torch.Tensor) -> float:
    columns = torch.arange(weights.shape[-1], dtype=weights.dtype)
    return ((weights.sum(0) * columns).sum() / weights.sum()).item()


@pytest.mark.parametrize("center_x", [0.3, 0.7])
def test_hard_mask_is_the_heads_coverage(render, capface, center_x):
    result = render(center_x=center_x)
    _, mask = capface.hint_features(result.hint)
    got = hard_mask(mask, (LATENT, LATENT))[0, 0] > 0
    expected = F.avg_pool2d(result.maps.alpha, 8)[0, 0] > 0.5
    assert expected.sum() >= 10
    assert (got != expected).sum() <= 2, f"{(got != expected).sum()} of {LATENT * LATENT} latent pixels differ"


def test_residuals_live_inside_the_head_and_the_change_concentrates_there(render, unet, capface, inputs):
    result = render(center_x=0.3)
    eps, residuals = run(unet, capface, result.hint, inputs)
    head = result.maps.alpha
    for index, residual in enumerate(residuals):
        size = tuple(residual.shape[-2:])
        inside = F.adaptive_max_pool2d(head, size)[0, 0] > 0  # latent pixels at this level the head touches
        outside = residual[0].abs().sum(0)[~inside]
        assert torch.count_nonzero(outside) == 0, f"residual {index} {size} is non-zero outside the head"
        if index < 6:  # levels 0 and 1 (the mask is too small for the coarsest ones)
            assert residual[0].abs().sum(0)[inside].mean() > 0.5, f"residual {index} is small inside the head"
    # later UNet layers mix neighbours (convs) and whole groups (GroupNorm, attention): eps changes everywhere, but
    # per pixel far more inside the head (grown by one latent pixel) than outside
    change = change_map(eps, plain(unet, inputs))
    assert contrast(change, head_region(result, grow=1)) > 3.0


def test_moving_the_head_moves_the_change(render, unet, capface, inputs):
    base = plain(unet, inputs)
    centres = []
    for center_x in (0.3, 0.7):
        result = render(center_x=center_x)
        change = change_map(run(unet, capface, result.hint, inputs)[0], base)
        excess = (change - change.median()).clamp_min(0)  # above the frame-wide GroupNorm/attention background
        head_x = centroid_x(F.avg_pool2d(result.maps.alpha, 8)[0, 0])
        centres.append(centroid_x(excess))
        assert abs(centres[-1] - head_x) < 2.0, (centres[-1], head_x)
    assert centres[1] - centres[0] > 0.25 * LATENT, centres


def test_turning_the_head_changes_the_output_inside_the_head(render, unet, capface, inputs):
    left, right = render(center_x=0.5, yaw=-40), render(center_x=0.5, yaw=40)
    eps_left, res_left = run(unet, capface, left.hint, inputs)
    eps_right, res_right = run(unet, capface, right.hint, inputs)
    assert not torch.equal(eps_left, eps_right)
    assert contrast(change_map(eps_left, eps_right), head_region(left, 1) | head_region(right, 1)) > 3.0
    differ = (res_left[0] - res_right[0]).abs().sum(1)[0]
    both = head_region(left) & head_region(right)
    assert differ[both].mean() > 0.1  # the turned head's normals, not only its outline


def test_identity_changes_the_residuals_inside_the_head_only(render, unet, capface, inputs):
    result = render(center_x=0.5)
    other_face = F.normalize(torch.randn(1, 1, 512, generator=torch.Generator().manual_seed(5)), dim=-1)
    _, one = run(unet, capface, result.hint, inputs)
    _, other = run(unet, capface, result.hint, inputs, face=other_face)
    differ = (one[1] - other[1]).abs().sum(1)[0]  # after the first transformer (block 0 is the latent's conv)
    head = head_region(result)
    assert differ[head].max() > 1e-4
    assert torch.count_nonzero(differ[~head]) == 0


@pytest.mark.parametrize("yaw", [-40, 40])
def test_sphere_stand_in_at_an_odd_size(capface, inputs, yaw):
    # the quick DECA-free hint: 136x96 pixels, a 17x12 latent
    hint = sphere_hint(136, 96, center_x=0.35, center_y=0.5, radius=0.3, yaw=yaw)
    _, mask = capface.hint_features(hint)
    coverage = F.avg_pool2d(hint_coverage(hint), 8)[0, 0]
    got = hard_mask(mask, (12, 17))[0, 0] > 0
    assert (got != (coverage > 0.5)).sum() <= 2
    x = torch.randn(1, 4, 12, 17, generator=torch.Generator().manual_seed(1))
    context = capface.identity_context(inputs[3], inputs[4])
    first = caphuman_ext.CapFaceControl(capface, hint=hint, context=context).residuals(x, inputs[1])[0][0]
    turned = sphere_hint(136, 96, center_x=0.35, center_y=0.5, radius=0.3, yaw=-yaw)
    second = caphuman_ext.CapFaceControl(capface, hint=turned, context=context).residuals(x, inputs[1])[0][0]
    assert torch.count_nonzero(first.abs().sum(0)[coverage == 0]) == 0
    assert (first - second).abs().sum(0)[coverage > 0.5].mean() > 0.1


def test_checkpoint_loads_as_the_same_network(tmp_path, unet):
    path = save_steerable_checkpoint(tmp_path / "caphuman_steerable.safetensors", unet)
    loaded = caphuman_ext.load_capface(path)
    expected = steerable_capface(unet, clip_token_dim=loaded.config.clip_token_dim)
    assert loaded.config == expected.config and loaded.config.clip_token_dim == 64
    for key, value in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    vision = caphuman_ext.read_clip_vision_state_dict(path)
    assert vision["vision_model.post_layernorm.weight"].shape == (64,)
