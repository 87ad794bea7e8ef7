"""Tiny random SD1.5-shaped checkpoint (+ sidecar yaml, local CLIP text folder) and CapHuman files for a local webui.
Run with the webui venv's python. Outside the repo."""
import gzip, json, os, shutil, subprocess, sys
import torch, yaml
from safetensors.torch import save_file, load_file

W = "/work/webui"
A = "/work/webui-assets"
clip_dir = f"{A}/tiny-clip"
os.makedirs(clip_dir, exist_ok=True)
# tokenizer files from open_clip's BPE
import open_clip, html
bpe = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
merges = [tuple(m.split()) for m in merges]
from open_clip.tokenizer import bytes_to_unicode
vocab = list(bytes_to_unicode().values())
vocab = vocab + [v + "</w>" for v in vocab]
vocab += ["".join(m) for m in merges]
vocab += ["<|startoftext|>", "<|endoftext|>"]
json.dump({t: i for i, t in enumerate(vocab)}, open(f"{clip_dir}/vocab.json", "w"))
open(f"{clip_dir}/merges.txt", "w").write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
torch.manual_seed(0)
cfg = CLIPTextConfig(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu")
text = CLIPTextModel(cfg)
text.save_pretrained(clip_dir)
tok = CLIPTokenizer(f"{clip_dir}/vocab.json", f"{clip_dir}/merges.txt")
tok.save_pretrained(clip_dir)

# yaml from v1-inference with tiny sizes
conf = yaml.safe_load(open(f"{W}/configs/v1-inference.yaml"))
u = conf["model"]["params"]["unet_config"]["params"]
u.update(model_channels=32, channel_mult=[1, 2, 2, 2], context_dim=64, num_heads=8, use_checkpoint=False)
d = conf["model"]["params"]["first_stage_config"]["params"]["ddconfig"]
d.update(ch=32, ch_mult=[1, 2, 4, 4], num_res_blocks=1)
conf["model"]["params"]["cond_stage_config"]["params"] = {"version": clip_dir}
sys.path[:0] = [f"{W}/repositories/stable-diffusion-stability-ai"]
from ldm.util import instantiate_from_config
from omegaconf import OmegaConf
model = instantiate_from_config(OmegaConf.create(conf["model"]))
g = torch.Generator().manual_seed(1)
state = {}
for k, v in model.state_dict().items():
    if v.is_floating_point() and not k.startswith("cond_stage_model"):
        v = torch.randn(v.shape, generator=g) * (0.5 / max(1, v[0].numel()) ** 0.5 if v.dim() > 1 else 0.02)
    state[k] = v.contiguous()
ckdir = f"{W}/models/Stable-diffusion"
os.makedirs(ckdir, exist_ok=True)
save_file(state, f"{ckdir}/tiny-sd15.safetensors")
yaml.safe_dump(conf, open(f"{ckdir}/tiny-sd15.yaml", "w"))
print("checkpoint ok", len(state))
