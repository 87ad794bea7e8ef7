"""Tiny CapHuman files for a local test webui (run with the extension's venv from the repo root).

Writes into $WEBUI_DIR/models/CapHuman: `caphuman_tiny.safetensors` (random CapFace matching tiny-sd15),
`caphuman_steerable.safetensors` (hand-set CapFace whose mask follows the rendered head, tests/steerable.py) when that
module exists, each with a tiny CLIP vision tower under `clip_vision.*`, and the synthetic identity models and
DECA/FLAME files written by ../shared/parity/make_synthetic_identity.py and make_synthetic_deca.py.

With `--sd15` the steerable CapFace fits SD1.5's UNet (320 channels, context 768: the Forge hosts' `rand-sd15`
checkpoints of make_rand_sd15.py); `caphuman_tiny` stays tiny (the "does not fit" case).
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

sys.path.insert(0, ".")
from caphuman_ext import CapFaceConfig  # noqa: E402
from tests.conftest import shared_dir  # noqa: E402
from tests.core_helpers import TINY_UNET, random_capface  # noqa: E402
from tests.generated_data import run_shared_generator  # noqa: E402
from tests.test_identity import tiny_clip_state  # noqa: E402

SD15_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=2,
                 attention_resolutions=[4, 2, 1], channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
                 transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False)
out = Path(os.environ.get("WEBUI_DIR", "/work/webui")) / "models" / "CapHuman"
out.mkdir(parents=True, exist_ok=True)
clip = {f"clip_vision.{k}": v.contiguous() for k, v in tiny_clip_state().items()}
config = CapFaceConfig(model_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=(2, 2, 2, 2),
                       attention_levels=(0, 1, 2), context_dim=64, clip_token_dim=64)
state = {k: v.contiguous() for k, v in random_capface(config, seed=3).state_dict().items()}
save_file({**state, **clip}, out / "caphuman_tiny.safetensors")
try:
    from tests.steerable import save_steerable_checkpoint
except ImportError:
    print("tests/steerable.py not found: no caphuman_steerable.safetensors")
else:
    path = out / "caphuman_steerable.safetensors"
    save_steerable_checkpoint(path, SD15_UNET if "--sd15" in sys.argv else TINY_UNET)
    state = load_file(path)
    if not any(k.startswith("clip_vision.") for k in state):
        save_file({**state, **clip}, path)
with tempfile.TemporaryDirectory() as tmp:
    parity = shared_dir() / "parity"
    for script in ("make_synthetic_identity.py", "make_synthetic_deca.py"):
        folder = run_shared_generator(parity, script, Path(tmp) / script)
        for path in folder.iterdir():
            if path.suffix in (".pth", ".pt", ".pkl", ".npy", ".obj", ".npz", ".tar"):
                shutil.copy(path, out / path.name)
print(sorted(p.name for p in out.iterdir()))
