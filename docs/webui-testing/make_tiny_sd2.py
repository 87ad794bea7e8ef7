"""A tiny random SD2-architecture checkpoint `tiny-sd2` (OpenCLIP ViT-B-32 text tower), for the SD2 message test.
Webui venv; run after make_tiny_webui_models.py."""

import os
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from random_ldm import WEBUI, instantiate, randomise, save  # noqa: E402

conf = yaml.safe_load(open(f"{WEBUI}/repositories/stable-diffusion-stability-ai/configs/stable-diffusion/"
                           "v2-inference.yaml"))
u = conf["model"]["params"]["unet_config"]["params"]
u.update(model_channels=32, channel_mult=[1, 2, 2, 2], context_dim=512, num_head_channels=8, use_checkpoint=False)
d = conf["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
d.update(ch=32, ch_mult=[1, 2, 4, 4], num_res_blocks=1)
conf["model"]["params"]["cond_stage_config"]["params"] = {"arch": "ViT-B-32", "version": None, "freeze": True,
                                                          "layer": "penultimate", "device": "cpu"}
model = instantiate(conf)
randomise(model, 3)
save(model, conf, f"{WEBUI}/models/Stable-diffusion", "tiny-sd2")
print("tiny-sd2 written")
