"""A unit end to end without the webui: files in a models folder -> identity + hint -> control -> hooked UNet."""

from __future__ import annotations

import torch
from PIL import Image
from safetensors.torch import save_file

import caphuman_ext
from caphuman_ext.control import CapFaceControl
from caphuman_ext.unit.builder import UnitBuilder
from caphuman_ext.unit.params import unit_from_dict
from tests.core_helpers import random_capface, tiny_unet
from tests.generated_data import link_or_copy
from tests.inputs import tiny_clip_state


def test_unit_builds_a_working_control(tmp_path, synthetic, deca_assets):
    folder = tmp_path / "CapHuman"
    folder.mkdir()
    for source in list(synthetic.iterdir()) + list(deca_assets.iterdir()):
        if source.suffix in (".pth", ".pt", ".pkl", ".npy", ".obj", ".npz", ".tar"):
            link_or_copy(source, folder / source.name)
    capface = random_capface(seed=3)
    capface.img_linear = torch.nn.Linear(64, 64)  # the tiny test CLIP tower has 64 channels
    capface.config = capface.config.__class__(**{**capface.config.to_dict(), "clip_token_dim": 64})
    state = {k: v.contiguous() for k, v in capface.state_dict().items()}
    state.update({f"clip_vision.{k}": v.contiguous() for k, v in tiny_clip_state().items()})
    save_file(state, folder / "caphuman_tiny.safetensors")

    unit = unit_from_dict({"enabled": True, "reference_images": [Image.open(synthetic / "identity.png")],
                           "strength": 0.9, "pose_only": 0.3, "yaw": 20})
    builder = UnitBuilder([folder], allow_download=False)
    prepared = builder.prepare(unit, torch.device("cpu"))
    control = CapFaceControl(prepared.capface, builder.hint(unit, 192, 128, torch.device("cpu")), prepared.context,
                             strength=prepared.params.strength)
    assert control.hint.shape == (1, 9, 128, 192) and control.context.shape == (1, 258, 64)
    assert control.strength == 0.9 and prepared.params.pose_only == 0.3  # pose-only: steps, set by the lifecycle
    assert control.hint[:, :3].abs().sum() > 0  # a head was rendered

    unet = tiny_unet(seed=9)
    x, t, text = torch.randn(2, 4, 16, 24), torch.tensor([900, 100]), torch.randn(2, 77, 64)
    with torch.no_grad():
        bare = unet(x, t, context=text)
        with caphuman_ext.hook_unet(unet, [control]):
            steered = unet(x, t, context=text)
    assert (steered - bare).abs().max() > 1e-4
