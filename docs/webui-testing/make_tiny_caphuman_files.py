"""Tiny CapHuman files for a local test webui (run with the extension's venv from the repo root).

Needs the synthetic identity models in /tmp/ident and DECA/FLAME files in /tmp/deca, written by
../shared/parity/make_synthetic_identity.py and make_synthetic_deca.py.
"""

import os
import shutil
import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, ".")
from caphuman_ext import CapFaceConfig  # noqa: E402
from tests.core_helpers import random_capface  # noqa: E402
from tests.test_identity import tiny_clip_state  # noqa: E402

out = Path(os.environ.get("WEBUI_DIR", "/work/webui")) / "models" / "CapHuman"
out.mkdir(parents=True, exist_ok=True)
config = CapFaceConfig(model_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=(2, 2, 2, 2),
                       attention_levels=(0, 1, 2), context_dim=64, clip_token_dim=64)
state = {k: v.contiguous() for k, v in random_capface(config, seed=3).state_dict().items()}
state.update({f"clip_vision.{k}": v.contiguous() for k, v in tiny_clip_state().items()})
save_file(state, out / "caphuman_tiny.safetensors")
for folder in ("/tmp/ident", "/tmp/deca"):
    for path in Path(folder).iterdir():
        if path.suffix in (".pth", ".pt", ".pkl", ".npy", ".obj", ".npz", ".tar"):
            shutil.copy(path, out / path.name)
print(sorted(p.name for p in out.iterdir()))
