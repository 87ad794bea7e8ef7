"""A tiny random SD2-architecture checkpoint (OpenCLIP ViT-B-32 text tower), for the SD2 message test."""
import os
import sys

import torch
import yaml
from safetensors.torch import save_file

W = os.environ.get("WEBUI_DIR", "/work/webui")
sys.path[:0] = [f"{W}/repositories/stable-diffusion-stability-ai"]
from ldm.util import instantiate_from_config  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

conf = yaml.safe_load(open(f"{W}/repositories/stable-diffusion-stability-ai/configs/stable-diffusion/v2-inference.yaml"))
u = conf["model"]["params"]["unet_config"]["params"]
u.update(model_channels=32, channel_mult=[1, 2, 2, 2], context_dim=512, num_head_channels=8, use_checkpoint=False)
d = conf["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
d.update(ch=32, ch_mult=[1, 2, 4, 4], num_res_blocks=1)
conf["model"]["params"]["cond_stage_config"]["params"] = {"arch": "ViT-B-32", "version": None, "freeze": True,
                                                          "layer": "penultimate", "device": "cpu"}
model = instantiate_from_config(OmegaConf.create(conf["model"]))
g = torch.Generator().manual_seed(3)
state = {}
for k, v in model.state_dict().items():
    if v.is_floating_point() and not k.startswith("cond_stage_model"):
        v = torch.randn(v.shape, generator=g) * ((0.5 / max(1, v[0].numel())) ** 0.5 if v.dim() > 1 else 0.02)
    state[k] = v.contiguous()
save_file(state, f"{W}/models/Stable-diffusion/tiny-sd2.safetensors")
yaml.safe_dump(conf, open(f"{W}/models/Stable-diffusion/tiny-sd2.yaml", "w"))
print("sd2 ok", len(state))
