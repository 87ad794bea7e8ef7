"""Test helpers for the CapFace core: tiny real ldm UNets and CapFaces, and an independent reference forward."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.diffusionmodules.util import timestep_embedding
from safetensors.torch import load_file
from torchvision.transforms.functional import resize

from caphuman_ext import CapFace, CapFaceConfig
from caphuman_ext.graphs import CapturedCall, GraphCache, version_of

TINY_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=2,
                 attention_resolutions=[4, 2, 1], channel_mult=[1, 2, 2, 2], num_heads=8,
                 use_spatial_transformer=True, transformer_depth=1, context_dim=64, use_checkpoint=False,
                 legacy=False)
TINY_CAPFACE = CapFaceConfig(model_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=(2, 2, 2, 2),
                             attention_levels=(0, 1, 2), context_dim=64)


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random, zero-initialised convs included, so every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = (1.0 / max(1, p[0].numel())) ** 0.5 if p.dim() > 1 else 0.05
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def tiny_unet(seed: int = 0, **overrides) -> UNetModel:
    return randomize(UNetModel(**{**TINY_UNET, **overrides}), seed)


def random_capface(config: CapFaceConfig = TINY_CAPFACE, seed: int = 0) -> CapFace:
    return randomize(CapFace(config), seed)


def parity_unet(parity_dir: Path) -> UNetModel:
    config = json.loads((parity_dir / "capface_tiny_config.json").read_text())["unet_and_capface"]
    unet = UNetModel(**config, out_channels=config["in_channels"]).eval()
    weights = load_file(parity_dir / "capface_tiny_weights.safetensors")
    prefix = "model.diffusion_model."
    unet.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    return unet


def reference_capface(capface: CapFace, x, hint, t, context):
    """The reference CapFace.forward, re-written from the paper code's semantics (in-place hint add, same order)."""
    emb = capface.time_embed(timestep_embedding(t, capface.config.model_channels, repeat_only=False))
    guided = capface.input_hint_block(hint, emb, context)
    mask = capface.mask_predict(guided)
    outs, h = [], x
    for i, (block, zero) in enumerate(zip(capface.input_blocks, capface.zero_convs)):
        h = block(h, emb, context)
        if i == 0:
            h = h + guided
        outs.append(zero(h, emb, context))
    h = capface.middle_block(h, emb, context)
    outs.append(capface.middle_block_out(h, emb, context))
    return outs, mask


def reference_eps(unet: UNetModel, x, t, text, units, extra=None):
    """The reference ControlledUnetModel + CapHuman.apply_model loop.

    units: list of (capface, hint, clip, face, strength, tau). extra: optional 13 plain residuals added unmasked
    (a stand-in for another ControlNet).
    """
    controls, masks = [], []
    for capface, hint, clip, face, strength, tau in units:
        rows = x.shape[0]
        hint, clip, face = (v.expand(rows, *v.shape[1:]) if v.shape[0] == 1 else v for v in (hint, clip, face))
        ctx = torch.cat([capface.img_linear(clip), capface.id_linear(face)], 1)
        if tau:
            ctx = ctx * (t <= tau).float()[:, None, None]
        outs, mask = reference_capface(capface, x, hint, t, ctx)
        controls.append([o * strength for o in outs])
        masks.append(mask)
    emb = unet.time_embed(timestep_embedding(t, unet.model_channels, repeat_only=False))
    hs, h = [], x
    for module in unet.input_blocks:
        h = module(h, emb, text)
        hs.append(h)
    h = unet.middle_block(h, emb, text)
    extra = list(extra) if extra is not None else None
    for c, m in zip(controls, masks):
        h = h + c.pop() * (resize(m, list(h.shape[-2:]), antialias=False) > 0.5).float()
    if extra:
        h = h + extra.pop()
    for module in unet.output_blocks:
        skip = hs.pop()
        for c, m in zip(controls, masks):
            skip = skip + c.pop() * (resize(m, list(h.shape[-2:]), antialias=False) > 0.5).float()
        if extra:
            skip = skip + extra.pop()
        h = module(torch.cat([h, skip], 1), emb, text)
    return unet.out(h)


class ReplayedClosure:
    """A stand-in `CapturedCall`: the `compute` closure of its capture, run on static buffers it owns."""

    def __init__(self, compute, x, timesteps, inputs, nbytes: int) -> None:
        self.x, self.timesteps = x.clone(), timesteps.clone()
        self.inputs = [tensor.clone() for tensor in inputs]
        self._sources, self._versions = list(inputs), [version_of(tensor) for tensor in inputs]
        self.compute, self.nbytes = compute, nbytes

    load = CapturedCall.load
    release_sources = CapturedCall.release_sources

    def __call__(self, x, timesteps, inputs=()):
        self.load(inputs)
        self.x.copy_(x)
        self.timesteps.copy_(timesteps)
        return self.compute(self.x, self.timesteps, self.inputs)


class ReplayOnCpu(GraphCache):
    """GraphCache whose "graphs" are the first call's closure run on static buffers (CPU stand-in for capture); the
    cache's own bookkeeping (keys, budget, drops, out-of-memory retry) is the real one. Each stand-in holds
    `graph_bytes`."""

    graph_bytes = 100

    def can_capture(self, x):
        return True

    def capture(self, compute, x, timesteps, inputs):
        return ReplayedClosure(compute, x, timesteps, inputs, self.graph_bytes)
