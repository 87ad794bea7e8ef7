"""A steerable CapFace for tests: weights set by hand so that its head mask is the rendered head's coverage and its
residuals are the hint itself, pooled to each level, inside the head.

    capface = steerable_capface(unet)           # or a CapFaceConfig, or the ldm UNet's params as a mapping
    save_steerable_checkpoint(path, unet_params)  # the same network as a caphuman.ckpt-like safetensors file

What the hand-set network computes (every layer is a real `ldm`/torch layer of `CapFace`, only the numbers are set):
- hint features F at latent size (channel: value), from the 9-channel hint `cat([normal, albedo, shading])`:
  0: `COVERAGE_GAIN * a`, a = the 8x8-pixel mean of the head's coverage, read off the normal map (unit normals on the
  head, exactly 0 off it: `min(2 * |n|_1, 1)` is 1 on the head, 0 off it); 1..9: `HINT_GAIN * (8x8 mean of each hint
  channel)`. Signed values cross the SiLUs shifted by `SHIFT` (silu(x + 16) = x + 16 to 2e-6).
- head mask = `sigmoid(MASK_SHARPNESS * (a - 0.5))`: > 0.5 exactly where more than half of an 8x8 block is head.
- residuals: every ResBlock is its skip path, every Downsample a 2x2 mean, every zero conv `RESIDUAL_GAIN * identity`,
  so residual k = `RESIDUAL_GAIN * (F + LATENT_GAIN * latent + context term)` pooled to level k. The context term:
  each SpatialTransformer adds `CONTEXT_GAIN *` the token mean of the identity context (queries are 0, so the cross
  attention averages its values), so the identity (CLIP tokens and face embedding) changes the residuals a little.
The time embedding is zero: residuals do not depend on the timestep.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from caphuman_ext import CapFace, CapFaceConfig, derive_config
from caphuman_ext.checkpoint import CONFIG_METADATA_KEY

SHIFT = 16.0  # carries signed values through SiLU: silu(x + SHIFT) = x + SHIFT for x >= -1
NORMAL_GAIN = 50.0  # silu(g n) + silu(-g n) = g |n| tanh(g |n| / 2) ≈ g |n| for |n| >= 0.1
EDGE_GAIN = 40.0  # min(2 |n|_1, 1) as (silu(g s) - silu(g (s - 1))) / g
COVERAGE_GAIN = 2.0
HINT_GAIN = 2.0
MASK_SHARPNESS = 20.0
LATENT_GAIN = 0.25
RESIDUAL_GAIN = 1.0
CONTEXT_GAIN = 0.5
FACE_GAIN = 100.0  # the face embedding is one unit vector among 258 context tokens: made to count a little
HINT_CHANNELS = 9  # normal 0..2, albedo 3..5, shading 6..8
FEATURES = 1 + HINT_CHANNELS  # coverage + the hint's channels

_CENTRE = ((1, 1),)
_POOL = ((1, 1), (1, 2), (2, 1), (2, 2))  # a 3x3 stride-2 conv with padding 1 reading input pixels 2i, 2i + 1


def capface_config_for(model: CapFaceConfig | nn.Module | Mapping, clip_token_dim: int | None = None) -> CapFaceConfig:
    """The CapFace architecture that fits a UNet: given as a config, an ldm `UNetModel`, or its constructor params
    (a yaml's `unet_config.params`). CapFace reads 4 latent channels (inpainting UNets included)."""
    if isinstance(model, CapFaceConfig):
        config = model
    else:
        if isinstance(model, Mapping):
            from ldm.modules.diffusionmodules.openaimodel import UNetModel

            with torch.device("meta"):
                model = UNetModel(**model)
        shapes = {k: v for k, v in model.state_dict().items() if k.startswith(("input_blocks.", "middle_block."))}
        shapes["input_hint_block.0.weight"] = torch.empty(16, HINT_CHANNELS, 3, 3, device="meta")
        config = dataclasses.replace(derive_config(shapes, num_heads=model.num_heads,
                                                   num_head_channels=model.num_head_channels), in_channels=4)
    if clip_token_dim is not None:
        config = dataclasses.replace(config, clip_token_dim=clip_token_dim)
    return config


def _set(weight: torch.Tensor, out: int, inp: int, value: float, taps=_CENTRE) -> None:
    if weight.dim() == 2:
        weight[out, inp] = value
        return
    for row, col in taps if weight.shape[-1] == 3 else ((0, 0),):
        weight[out, inp, row, col] = value


def _identity(layer: nn.Module, gain: float, count: int | None = None, taps=_CENTRE, offset: int = 0) -> None:
    """`gain` from input channel i to output channel i + offset (the first `count`, or as many as both have)."""
    weight = layer.weight
    count = min(weight.shape[0] - offset, weight.shape[1]) if count is None else count
    for i in range(count):
        _set(weight, i + offset, i, gain, taps)


def _hand_set_hint_block(block: nn.Sequential, model_channels: int) -> None:
    convs = [m for m in block if isinstance(m, nn.Conv2d)]
    first, edges, *middle, last = convs
    normal = 3
    for c in range(normal):  # +-g n_c: their SiLUs sum to g |n_c|
        _set(first.weight, c, c, NORMAL_GAIN)
        _set(first.weight, normal + c, c, -NORMAL_GAIN)
    carried = 2 * normal
    for j in range(HINT_CHANNELS):  # every hint channel, shifted
        _set(first.weight, carried + j, j, 1.0)
        first.bias[carried + j] = SHIFT
    for c in range(2 * normal):  # silu(2 g1 |n|_1) and silu(g1 (2 |n|_1 - 1))
        _set(edges.weight, 0, c, 2 * EDGE_GAIN / NORMAL_GAIN)
        _set(edges.weight, 1, c, 2 * EDGE_GAIN / NORMAL_GAIN)
    edges.bias[1] = -EDGE_GAIN
    for j in range(HINT_CHANNELS):
        _set(edges.weight, 2 + j, carried + j, 1.0)
    for conv in middle:
        stride = conv.stride[0]
        taps, share = (_POOL, 0.25) if stride == 2 else (_CENTRE, 1.0)
        if conv is middle[0]:  # coverage = (first - second) / g1, shifted; the hint channels move down by one
            _set(conv.weight, 0, 0, share / EDGE_GAIN, taps)
            _set(conv.weight, 0, 1, -share / EDGE_GAIN, taps)
            conv.bias[0] = SHIFT
            for j in range(HINT_CHANNELS):
                _set(conv.weight, 1 + j, 2 + j, share, taps)
        else:
            _identity(conv, share, FEATURES, taps)
    if model_channels < FEATURES + 4:
        raise ValueError(f"a steerable CapFace needs at least {FEATURES + 4} channels, not {model_channels}")
    _identity(last, HINT_GAIN, FEATURES)
    _set(last.weight, 0, 0, COVERAGE_GAIN)
    last.bias[:FEATURES] = -HINT_GAIN * SHIFT
    last.bias[0] = -COVERAGE_GAIN * SHIFT


def _hand_set_transformer(transformer: nn.Module) -> None:
    """x + CONTEXT_GAIN * mean over tokens of the context (its first channels), at every position."""
    for block in transformer.transformer_blocks:
        attention = block.attn2
        _identity(attention.to_v, 1.0)
        _identity(attention.to_out[0], 1.0)
    _identity(transformer.proj_out, CONTEXT_GAIN)


def steerable_capface(model: CapFaceConfig | nn.Module | Mapping, clip_token_dim: int | None = None) -> CapFace:
    """A CapFace for `model` (a config, an ldm UNet, or its params) whose mask and residuals follow the hint."""
    from ldm.modules.attention import SpatialTransformer
    from ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock

    config = capface_config_for(model, clip_token_dim)
    if config.hint_channels != HINT_CHANNELS:
        raise ValueError(f"a steerable CapFace reads a {HINT_CHANNELS}-channel hint, not {config.hint_channels}")
    capface = CapFace(config)
    with torch.no_grad():
        for module in capface.modules():
            if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            else:
                for parameter in module.parameters(recurse=False):
                    parameter.zero_()
        _hand_set_hint_block(capface.input_hint_block, config.model_channels)
        _set(capface.mask_predict[0].weight, 0, 0, MASK_SHARPNESS / COVERAGE_GAIN)
        capface.mask_predict[0].bias.fill_(-MASK_SHARPNESS / 2)
        _identity(capface.input_blocks[0][0], LATENT_GAIN, config.in_channels, offset=FEATURES)
        for module in capface.modules():
            if isinstance(module, ResBlock) and isinstance(module.skip_connection, nn.Conv2d):
                _identity(module.skip_connection, 1.0)
            elif isinstance(module, Downsample):
                _identity(module.op, 0.25, taps=_POOL)
            elif isinstance(module, SpatialTransformer):
                _hand_set_transformer(module)
        for zero_conv in [*capface.zero_convs, capface.middle_block_out]:
            _identity(zero_conv[0], RESIDUAL_GAIN)
        _identity(capface.img_linear, 1.0)
        _identity(capface.id_linear, FACE_GAIN)
    return capface.eval().requires_grad_(False)


def sphere_hint(width: int, height: int, center_x: float = 0.5, center_y: float = 0.5, radius: float = 0.25,
                yaw: float = 0.0) -> torch.Tensor:
    """A quick stand-in for a rendered head (no DECA): a sphere of `radius` x height at canvas fractions
    (center_x, center_y), turned by `yaw` degrees, as a (1, 9, height, width) `cat([normal, albedo, shading])` with
    unit normals on the sphere and zeros off it, like the head renderer's. Its coverage is `hint_coverage`."""
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    dx = (xs - center_x * width) / (radius * height)
    dy = (ys - center_y * height) / (radius * height)
    inside = (dx**2 + dy**2 < 1).float()
    dz = -(1 - (dx**2 + dy**2).clamp(max=1)).sqrt()  # towards the camera, as the renderer's normals
    angle = torch.tensor(yaw * torch.pi / 180)
    normal = torch.stack([dx * angle.cos() + dz * angle.sin(), dy, -dx * angle.sin() + dz * angle.cos()]) * inside
    albedo = torch.stack([0.6 + 0.2 * normal[0], 0.5 + 0.2 * normal[1], torch.full_like(dx, 0.4)]) * inside
    shading = albedo * (0.4 + 0.6 * (-normal[2]).clamp_min(0))
    return torch.cat([normal, albedo, shading])[None]


def hint_coverage(hint: torch.Tensor) -> torch.Tensor:
    """Per-pixel head coverage of a hint (1 where its normal is non-zero): (B, 1, H, W)."""
    return (hint[:, :3].abs().sum(1, keepdim=True) > 0).to(hint.dtype)


def save_steerable_checkpoint(path: str | Path, unet_config: CapFaceConfig | nn.Module | Mapping | None = None,
                              clip_vision: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write a steerable CapFace as `caphuman.ckpt` lays it out (`control_model.*`, `id_linear.*`, `img_linear.*`,
    `clip_vision.*`), in safetensors with its config as metadata, for `load_capface`.

    unet_config: the UNet it must fit (default: the tiny test UNet, `tests.core_helpers.TINY_UNET`); clip_vision:
    a `CLIPVisionModel` state dict (default: the tests' tiny 64-wide tower), stored keyed `vision_model.*` as
    caphuman.ckpt stores it; `img_linear` takes its width.
    """
    from safetensors.torch import save_file

    if unet_config is None:
        from tests.core_helpers import TINY_UNET

        unet_config = TINY_UNET
    if clip_vision is None:
        from tests.inputs import tiny_clip_state

        clip_vision = tiny_clip_state()
    vision = {k if k.startswith("vision_model.") else f"vision_model.{k}": v for k, v in clip_vision.items()}
    clip_width = vision["vision_model.post_layernorm.weight"].shape[0]
    capface = steerable_capface(unet_config, clip_token_dim=clip_width)
    state = {}
    for key, value in capface.state_dict().items():
        name = key if key.startswith(("id_linear.", "img_linear.")) else f"control_model.{key}"
        state[name] = value.contiguous()
    state.update({f"clip_vision.{k}": v.contiguous() for k, v in vision.items()})
    path = Path(path)
    save_file(state, path, metadata={CONFIG_METADATA_KEY: json.dumps(capface.config.to_dict())})
    return path
