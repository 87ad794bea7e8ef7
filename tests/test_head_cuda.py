"""GPU: the pure-PyTorch renderer gives the same maps on CUDA as on the CPU."""

from __future__ import annotations

import pytest
import torch

from benchmarks.bench_preprocess import flame_sized_assets
from preprocessors.head.flame import Flame
from preprocessors.head.projection import orthographic
from preprocessors.head.renderer import HeadRenderer
from preprocessors.head.texture import FlameTexture

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_cuda_maps_equal_cpu_maps():
    model, landmarks, template, mean, basis = flame_sized_assets()
    flame, texture, renderer = Flame(model, landmarks), FlameTexture(mean, basis), HeadRenderer(template)
    g = torch.Generator().manual_seed(0)
    shape, exp = 0.5 * torch.randn(1, 100, generator=g), 0.3 * torch.randn(1, 50, generator=g)
    pose = torch.tensor([[0.1, 0.3, 0.0, 0.05, 0.0, 0.0]])
    light = torch.cat([torch.full((1, 1, 3), 3.0), 0.3 * torch.randn(1, 8, 3, generator=g)], 1)
    tex = 0.3 * torch.randn(1, 50, generator=g)
    results = []
    for device in ("cpu", "cuda"):
        f, t, r = flame.to(device), texture.to(device), renderer.to(device)
        with torch.no_grad():
            vertices, _, _ = f(shape.to(device), exp.to(device), pose.to(device))
            projected = orthographic(vertices, torch.tensor([[8.0, 0.0, 0.0]], device=device))
            maps = r(vertices, projected, t(tex.to(device)), light.to(device), 384, 512)
        results.append(maps.hint().cpu())
    cpu, cuda = results
    differing = ((cpu - cuda).abs().amax(1) > 1e-3).float().mean()
    assert differing < 1e-3  # at most a few edge pixels may flip between devices
    assert cpu[:, :3].abs().sum() > 0
