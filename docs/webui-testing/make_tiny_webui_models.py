"""Tiny random SD1.5-shaped checkpoint for a local test webui: safetensors + sidecar yaml whose CLIP text encoder is
a local 2-layer model with the real CLIP BPE vocabulary. Run with the webui venv's python."""

import gzip
import json
import os
import sys

import open_clip
import torch
import yaml
from open_clip.tokenizer import bytes_to_unicode
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

WEBUI = os.environ.get("WEBUI_DIR", "/work/webui")
ASSETS = os.environ.get("WEBUI_ASSETS", f"{WEBUI}/test-assets")
clip_dir = f"{ASSETS}/tiny-clip"
os.makedirs(clip_dir, exist_ok=True)

# tokenizer files written from open-clip-torch's BPE file
bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
merges = [tuple(m.split()) for m in gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
vocab = list(bytes_to_unicode().values())
vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
with open(f"{clip_dir}/vocab.json", "w") as handle:
    json.dump({token: i for i, token in enumerate(vocab)}, handle)
with open(f"{clip_dir}/merges.txt", "w") as handle:
    handle.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
torch.manual_seed(0)
text_config = CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu")
CLIPTextModel(text_config).save_pretrained(clip_dir)
CLIPTokenizer(f"{clip_dir}/vocab.json", f"{clip_dir}/merges.txt").save_pretrained(clip_dir)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from random_ldm import check, instantiate, randomise, save  # noqa: E402


def write_checkpoint(config_name: str, name: str, seed: int) -> None:
    """A tiny random checkpoint of the architecture in `configs/<config_name>` with its sidecar yaml."""
    conf = yaml.safe_load(open(f"{WEBUI}/configs/{config_name}"))
    conf["model"]["params"]["unet_config"]["params"].update(model_channels=32, channel_mult=[1, 2, 2, 2],
                                                            context_dim=64, num_heads=8, use_checkpoint=False)
    conf["model"]["params"]["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 2, 4, 4],
                                                                               num_res_blocks=1)
    conf["model"]["params"]["cond_stage_config"]["params"] = {"version": clip_dir}
    conf["model"]["params"].pop("ckpt_path", None)
    model = instantiate(conf)
    randomise(model, seed)
    save(model, conf, f"{WEBUI}/models/Stable-diffusion", name)
    print(name, check(model))


write_checkpoint("v1-inference.yaml", "tiny-sd15", 1)
write_checkpoint("v1-inference.yaml", "tiny-sd15-b", 11)  # same shapes, other weights: refiner / hires checkpoint
write_checkpoint("v1-inpainting-inference.yaml", "tiny-sd15-inpainting", 21)  # 9-channel UNet
