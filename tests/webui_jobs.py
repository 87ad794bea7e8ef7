"""Jobs through A1111 v1.10.1's call sequence (tests/webui_sim.py) with the extension's real script: the webui built
for a test module (the `webui` fixture of conftest.py), units, generations and what they changed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from types import SimpleNamespace

import torch
from PIL import Image
from safetensors.torch import save_file

from caphuman_ext.unit.builder import UnitBuilder
from tests import webui_sim
from tests.core_helpers import TINY_CAPFACE, random_capface, tiny_unet
from tests.generated_data import link_or_copy
from tests.inputs import tiny_clip_state
from tests.steerable import save_steerable_checkpoint


def write_capface(path, config=TINY_CAPFACE, seed: int = 3) -> None:
    capface = random_capface(config, seed=seed)
    capface.img_linear = torch.nn.Linear(64, 64)  # the tiny test CLIP tower has 64 channels
    capface.config = capface.config.__class__(**{**capface.config.to_dict(), "clip_token_dim": 64})
    state = {k: v.contiguous() for k, v in capface.state_dict().items()}
    state.update({f"clip_vision.{k}": v.contiguous() for k, v in tiny_clip_state().items()})
    save_file(state, path)


STEERABLE = "caphuman_zsteerable.safetensors"  # sorts after caphuman_tiny: the default model stays the random one


def unit(webui, **fields) -> dict:
    return {"enabled": True, "reference_images": [webui.photo], **fields}


def generate(webui, units=(), **fields):
    webui_sim.CALL_LOG.clear()
    fields.setdefault("base", webui.base)
    p = webui_sim.Processing(script=webui.script, script_args=tuple(units), **fields)
    images = webui_sim.process_images(p)
    p.calls = list(webui_sim.CALL_LOG)
    return images, p


def plain_then_caphuman_then_plain(webui, units, **fields):
    before, _ = generate(webui, (), **fields)
    steered, p = generate(webui, units, **fields)
    after, _ = generate(webui, (), **fields)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b), "the plain generation after CapHuman differs from the one before"
    assert webui_sim.no_caphuman_hooks(webui.base.model.diffusion_model, webui.other.model.diffusion_model)
    return before, steered, p


def changed(before, steered) -> list[float]:
    return [float((a - b).abs().max()) for a, b in zip(before, steered, strict=True)]


def webui_for_tests(tmp_path_factory, synthetic, deca_assets) -> Iterator[SimpleNamespace]:
    """A fake webui with the script loaded and model files in its models/CapHuman; undone after the last test."""
    root = tmp_path_factory.mktemp("webui_models")
    folder = root / "CapHuman"
    folder.mkdir()
    for source in list(synthetic.iterdir()) + list(deca_assets.iterdir()):
        if source.suffix in (".pth", ".pt", ".pkl", ".npy", ".obj", ".npz", ".tar"):
            link_or_copy(source, folder / source.name)
    write_capface(folder / "caphuman_tiny.safetensors")
    save_steerable_checkpoint(folder / STEERABLE)
    saved = {k: v for k, v in sys.modules.items() if k == "modules" or k.startswith("modules.")}
    fake = webui_sim.install_fake_webui(root)
    undo_hijack = webui_sim.hijack_unet_cat()
    module = webui_sim.load_script_module()
    photo = Image.open(synthetic / "identity.png").convert("RGB")
    yield SimpleNamespace(script=module.Script(), module=module, fake=fake, photo=photo, folder=folder,
                          base=webui_sim.FakeSDModel(tiny_unet(seed=1), "base"),
                          other=webui_sim.FakeSDModel(tiny_unet(seed=5), "other"))
    undo_hijack()
    for key in [k for k in sys.modules if k == "modules" or k.startswith("modules.")]:
        del sys.modules[key]
    sys.modules.update(saved)


def rendered_hints(webui, monkeypatch) -> dict:
    """{(width, height): hint} of every canvas the units render in the next generations."""
    hints = {}
    original = UnitBuilder.hint

    def spy(self, unit_params, width, height, device):
        hints[(width, height)] = original(self, unit_params, width, height, device)
        return hints[(width, height)]

    monkeypatch.setattr(UnitBuilder, "hint", spy)
    return hints
