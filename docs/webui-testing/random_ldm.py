"""Random parameters for an `ldm` LatentDiffusion made from a webui config, keeping what ldm computed itself.

Only parameters are drawn (weights ~ N(0, 1/fan_in), biases ~ N(0, 0.02²), norm layers at their identity init);
registered buffers — the noise schedule (betas, alphas_cumprod, ... from linear_start/linear_end/timesteps) — stay as
ldm's `register_schedule` computed them, so samplers see SD1.5's real scaled-linear schedule. The text encoder is
left alone (it is a separate tiny CLIP loaded from its own folder). Run with the webui venv's python.
"""

from __future__ import annotations

import os
import sys

import torch

WEBUI = os.environ.get("WEBUI_DIR", "/work/webui")
sys.path[:0] = [f"{WEBUI}/repositories/stable-diffusion-stability-ai"]

NORMS = (torch.nn.GroupNorm, torch.nn.LayerNorm)


def instantiate(conf: dict):
    """The LatentDiffusion a config dict describes (no weights loaded)."""
    from ldm.util import instantiate_from_config
    from omegaconf import OmegaConf

    return instantiate_from_config(OmegaConf.create(conf["model"]))


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Draw every parameter outside the text encoder; buffers untouched."""
    generator = torch.Generator().manual_seed(seed)
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters()}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("cond_stage_model") or id(param) in norm_params:
                continue
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) / param[0].numel() ** 0.5)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


def check(model, latent_size: int = 16) -> dict:
    """Schedule sanity and a decoded random latent's pixel statistics (the webui maps decoded x to (x + 1) / 2)."""
    alphas = model.alphas_cumprod
    with torch.no_grad():
        z = torch.randn(1, 4, latent_size, latent_size, generator=torch.Generator().manual_seed(0))
        pixels = ((model.decode_first_stage(z) + 1) / 2).clamp(0, 1)
    stats = {"alphas_cumprod": (round(float(alphas[0]), 5), round(float(alphas[-1]), 5)),
             "pixel_min": round(float(pixels.min()), 3), "pixel_max": round(float(pixels.max()), 3),
             "pixel_std": round(float(pixels.std()), 3), "finite": bool(torch.isfinite(pixels).all())}
    assert stats["finite"] and stats["pixel_std"] > 0.05, stats
    assert abs(float(alphas[0]) - (1 - 0.00085)) < 1e-6 and 0.004 < float(alphas[-1]) < 0.005, stats
    return stats


def save(model, conf: dict, folder: str, name: str, half: bool = False) -> None:
    """`<name>.safetensors` with its sidecar `<name>.yaml` (the webui reads the config from it)."""
    import yaml
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, f"{folder}/{name}.safetensors")
    with open(f"{folder}/{name}.yaml", "w") as handle:
        yaml.safe_dump(conf, handle)
