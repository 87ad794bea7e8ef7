"""Build the webui's sampling setup at real size with random weights: SD1.5 UNet (v1 inference config) in fp16 with
SDPA attention and a device-side timestep embedding (what A1111 v1.10 patches in), and a full-size CapFace."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SD15_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                 num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
                 transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False)


def _sdpa_forward(self, x, context=None, mask=None, **kwargs):
    """CrossAttention with torch's scaled_dot_product_attention, as the webui's `--opt-sdp-attention`."""
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    b, n, _ = q.shape
    heads = self.heads
    q, k, v = (t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    out = out.transpose(1, 2).reshape(b, n, -1)
    return self.to_out(out)


def _device_timestep_embedding(timesteps, dim, max_period=10000, repeat_only=False):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def patch_ldm_like_webui() -> None:
    from ldm.modules import attention
    from ldm.modules.diffusionmodules import openaimodel

    attention.CrossAttention.forward = _sdpa_forward
    openaimodel.timestep_embedding = _device_timestep_embedding


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (speed does not depend on the values, but zero convs would hide nothing)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = (1.0 / max(1, p[0].numel())) ** 0.5 if p.dim() > 1 else 0.02
            p.normal_(0.0, scale)
    return model


def sd15_unet(device: str = "cuda", dtype: torch.dtype = torch.float16):
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device(device):
        unet = randomize_(UNetModel(**SD15_UNET), 0).to(dtype).eval().requires_grad_(False)
    unet.dtype = dtype
    return unet


def sd15_capface(device: str = "cuda", dtype: torch.dtype = torch.float16, seed: int = 1):
    from caphuman_ext import CapFace, CapFaceConfig

    with torch.device(device):
        return randomize_(CapFace(CapFaceConfig()), seed).to(dtype).eval().requires_grad_(False)
