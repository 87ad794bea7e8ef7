"""An SD1.5-width (320 channels) CapFace and a plain random ControlNet of that width, for the ControlNet side-by-side
test on mid-sd15 (run with the extension's venv from the repo root)."""

import os
import sys

from safetensors.torch import save_file

sys.path.insert(0, ".")
from caphuman_ext import CapFace, CapFaceConfig  # noqa: E402
from tests.core_helpers import randomize  # noqa: E402
from tests.test_identity import tiny_clip_state  # noqa: E402

WEBUI = os.environ.get("WEBUI_DIR", "/work/webui")
capface = randomize(CapFace(CapFaceConfig(model_channels=320, channel_mult=(1, 2, 4, 4), context_dim=64,
                                          clip_token_dim=64)), 5)
state = {k: v.half().contiguous() for k, v in capface.state_dict().items()}
state.update({f"clip_vision.{k}": v.contiguous() for k, v in tiny_clip_state().items()})
save_file(state, f"{WEBUI}/models/CapHuman/caphuman_mid.safetensors")
# a plain ControlNet (3-channel hint) of the same width: CapFace's layout without mask and identity parts
control = randomize(CapFace(CapFaceConfig(model_channels=320, channel_mult=(1, 2, 4, 4), context_dim=64,
                                          hint_channels=3)), 6)
plain = {f"control_model.{k}": v.half().contiguous() for k, v in control.state_dict().items()
         if not k.startswith(("mask_predict", "id_linear", "img_linear"))}
os.makedirs(f"{WEBUI}/models/ControlNet", exist_ok=True)
save_file(plain, f"{WEBUI}/models/ControlNet/control_mid_random.safetensors")
print("written")
