"""SD1.5-width (320 channels) random checkpoint `mid-sd15` with the tiny CLIP/VAE (sd-webui-controlnet's loader
hard-codes SD1.5's widths). Stored in float16; the schedule buffers stay as ldm computed them. Webui venv."""

import os
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from random_ldm import WEBUI, check, instantiate, randomise, save  # noqa: E402

folder = f"{WEBUI}/models/Stable-diffusion"
conf = yaml.safe_load(open(f"{folder}/tiny-sd15.yaml"))
conf["model"]["params"]["unet_config"]["params"].update(model_channels=320, channel_mult=[1, 2, 4, 4])
model = instantiate(conf)
randomise(model, 2)
print("mid-sd15", check(model, latent_size=8))
save(model, conf, folder, "mid-sd15", half=True)
