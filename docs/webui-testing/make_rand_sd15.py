"""Full-size random SD1.5 checkpoints for a Forge host, which detects the model type from the tensors (SD1.5: UNet
320 channels, context 768, CLIP-L text model, the SD VAE): `rand-sd15`, `rand-sd15-b` (other weights: refiner / hires
checkpoint) and, with `--inpainting`, `rand-sd15-inpainting` (9-channel UNet). The CLIP-L text model is random (its
own config, the real CLIP BPE vocabulary); parameters are drawn by random_ldm.py, so the noise schedule is SD1.5's.
Stored in float16. Run with a venv that has `ldm` (Forge Classic's, with WEBUI_DIR=its folder).

    WEBUI_DIR=/work/forge-classic python make_rand_sd15.py OUT_MODELS_DIR [--inpainting]
"""

import gzip
import json
import os
import sys

import open_clip
import torch
import yaml
from open_clip.tokenizer import bytes_to_unicode
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from random_ldm import WEBUI, check, instantiate, randomise, save  # noqa: E402

out = sys.argv[1]
clip_dir = os.environ.get("CLIP_L_DIR", f"{WEBUI}/test-assets/random-clip-l")
if not os.path.exists(f"{clip_dir}/config.json"):
    os.makedirs(clip_dir, exist_ok=True)
    bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    merges = [tuple(m.split()) for m in gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    with open(f"{clip_dir}/vocab.json", "w") as handle:
        json.dump({token: i for i, token in enumerate(vocab)}, handle)
    with open(f"{clip_dir}/merges.txt", "w") as handle:
        handle.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                            projection_dim=768)
    CLIPTextModel(config).save_pretrained(clip_dir)
    CLIPTokenizer(f"{clip_dir}/vocab.json", f"{clip_dir}/merges.txt").save_pretrained(clip_dir)


def write_checkpoint(config_name: str, name: str, seed: int) -> None:
    conf = yaml.safe_load(open(f"{WEBUI}/configs/{config_name}"))
    conf["model"]["params"]["unet_config"]["params"]["use_checkpoint"] = False
    conf["model"]["params"]["cond_stage_config"]["params"] = {"version": clip_dir}
    conf["model"]["params"].pop("ckpt_path", None)
    model = instantiate(conf)
    randomise(model, seed)
    print(name, check(model), flush=True)
    save(model, conf, out, name, half=True)
    os.remove(f"{out}/{name}.yaml")  # Forge reads the architecture from the tensors
    del model


write_checkpoint("v1-inference.yaml", "rand-sd15", 1)
write_checkpoint("v1-inference.yaml", "rand-sd15-b", 11)
if "--inpainting" in sys.argv:
    write_checkpoint("v1-inpainting-inference.yaml", "rand-sd15-inpainting", 21)
