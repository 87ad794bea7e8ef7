"""SD1.5-width (320 channels) random checkpoint with the tiny CLIP/VAE, a plain ControlNet and a CapFace for it."""
import os
import sys

import torch
import yaml
from safetensors.torch import save_file

W = os.environ.get("WEBUI_DIR", "/work/webui")
sys.path[:0] = [f"{W}/repositories/stable-diffusion-stability-ai"]
from ldm.util import instantiate_from_config  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

conf = yaml.safe_load(open(f"{W}/models/Stable-diffusion/tiny-sd15.yaml"))
conf["model"]["params"]["unet_config"]["params"].update(model_channels=320, channel_mult=[1, 2, 4, 4])
model = instantiate_from_config(OmegaConf.create(conf["model"]))
g = torch.Generator().manual_seed(2)
state = {}
with torch.no_grad():
    for k, v in model.state_dict().items():
        if v.is_floating_point() and not k.startswith("cond_stage_model"):
            v = torch.randn(v.shape, generator=g) * ((0.5 / max(1, v[0].numel())) ** 0.5 if v.dim() > 1 else 0.02)
        state[k] = v.half().contiguous() if v.is_floating_point() else v.contiguous()
save_file(state, f"{W}/models/Stable-diffusion/mid-sd15.safetensors")
yaml.safe_dump(conf, open(f"{W}/models/Stable-diffusion/mid-sd15.yaml", "w"))
print("mid sd ok")
