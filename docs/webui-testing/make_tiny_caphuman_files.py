"""Tiny CapHuman files for the local webui (run with the caphuman venv from the repo root)."""
import shutil, subprocess, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
sys.path.insert(0, ".")
from tests.core_helpers import random_capface
from tests.test_identity import tiny_clip_state
from caphuman_ext import CapFaceConfig
out = Path("/work/webui/models/CapHuman")
cfg = CapFaceConfig(model_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=(2, 2, 2, 2),
                    attention_levels=(0, 1, 2), context_dim=64, clip_token_dim=64)
cap = random_capface(cfg, seed=3)
state = {k: v.contiguous() for k, v in cap.state_dict().items()}
state.update({f"clip_vision.{k}": v.contiguous() for k, v in tiny_clip_state().items()})
save_file(state, out / "caphuman_tiny.safetensors")
for d in ("/tmp/ident", "/tmp/deca"):
    for f in Path(d).iterdir():
        if f.suffix in (".pth", ".pt", ".pkl", ".npy", ".obj", ".npz", ".tar"):
            shutil.copy(f, out / f.name)
print(sorted(p.name for p in out.iterdir()))
