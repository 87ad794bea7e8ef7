"""Checkpoint reading: config from weights, Lightning/control-only files, the converter, refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import caphuman_ext
from caphuman_ext.config import CapFaceConfig, derive_config
from caphuman_ext.convert import main as convert_main
from tests.core_helpers import TINY_CAPFACE, random_capface


class TrainerCallbackState:
    """Stands for the trainer objects Lightning pickles next to the weights."""

    def __init__(self) -> None:
        self.dirpath = Path("/tmp/ckpts")
        self.best = 0.5


class Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def capface_state(capface) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in capface.state_dict().items()}


def lightning_checkpoint(path: Path, capface, extra: dict | None = None) -> None:
    state = {}
    for k, v in capface_state(capface).items():
        state[k if k.startswith(("id_linear.", "img_linear.")) else f"control_model.{k}"] = v
    state["model.diffusion_model.out.2.weight"] = torch.randn(4, 32, 3, 3)
    state["control_cond_stage_model.transformer.vision_model.post_layernorm.weight"] = torch.randn(16)
    torch.save({"epoch": 3, "global_step": 10, "state_dict": state, "callbacks": {"cb": TrainerCallbackState()},
                **(extra or {})}, path)


@pytest.mark.parametrize("config", [
    CapFaceConfig(),  # SD1.5 size
    CapFaceConfig(context_dim=1024, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True),
    TINY_CAPFACE,
])
def test_config_is_derived_from_weights(config):
    with torch.device("meta"):
        model = caphuman_ext.CapFace(config)
    assert derive_config(model.state_dict()) == config
    if config == CapFaceConfig():
        assert model.num_residuals == 13
        assert model.mask_predict[0].weight.shape == (1, 320, 3, 3)


def test_lightning_checkpoint_loads_without_running_its_pickles(tmp_path):
    capface = random_capface(seed=11)
    path = tmp_path / "caphuman.ckpt"
    marker = tmp_path / "pwned"
    lightning_checkpoint(path, capface, {"evil": Exploit(str(marker))})
    loaded = caphuman_ext.load_capface(path)
    assert not marker.exists()
    for key, value in capface.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert loaded.config == TINY_CAPFACE
    vision = caphuman_ext.read_clip_vision_state_dict(path)
    assert list(vision) == ["vision_model.post_layernorm.weight"]


def test_converter_writes_one_small_file(tmp_path, capsys):
    capface = random_capface(seed=12)
    source, target = tmp_path / "caphuman.ckpt", tmp_path / "caphuman_capface.safetensors"
    lightning_checkpoint(source, capface)
    convert_main([str(source), str(target), "--half"])
    assert "CapFace tensors" in capsys.readouterr().out
    stored = load_file(target)
    assert not any(k.startswith(("model.", "control_model.")) for k in stored)
    assert "clip_vision.vision_model.post_layernorm.weight" in stored
    loaded = caphuman_ext.load_capface(target)
    assert loaded.dtype == torch.float16
    assert loaded.config == TINY_CAPFACE
    torch.testing.assert_close(loaded.id_linear.weight.float(), capface.id_linear.weight, atol=1e-3, rtol=1e-3)
    assert caphuman_ext.read_clip_vision_state_dict(target) is not None


def test_load_capface_device_and_dtype(tmp_path):
    path = tmp_path / "capface.safetensors"
    save_file(capface_state(random_capface(seed=13)), path)
    model = caphuman_ext.load_capface(path, device="cpu", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    assert not any(p.requires_grad for p in model.parameters())


def test_plain_controlnet_is_refused(tmp_path):
    state = {k: v for k, v in capface_state(random_capface(seed=14)).items()
             if not k.startswith(("mask_predict", "id_linear", "img_linear"))}
    path = tmp_path / "control_v11p_sd15_openpose.safetensors"
    save_file({f"control_model.{k}": v for k, v in state.items()}, path)
    with pytest.raises(caphuman_ext.CheckpointError, match="plain ControlNet") as info:
        caphuman_ext.load_capface(path)
    assert path.name in str(info.value)


def test_stable_diffusion_checkpoint_is_refused(tmp_path):
    path = tmp_path / "v1-5-pruned.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3)}, path)
    with pytest.raises(caphuman_ext.CheckpointError, match="Stable Diffusion checkpoint"):
        caphuman_ext.load_capface(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_file_is_refused(tmp_path, suffix):
    path = tmp_path / f"caphuman{suffix}"
    if suffix == ".safetensors":
        save_file(capface_state(random_capface(seed=15)), path)
    else:
        lightning_checkpoint(path, random_capface(seed=15))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(caphuman_ext.CheckpointError, match="truncated|cannot read"):
        caphuman_ext.load_capface(path)


def test_mismatched_shapes_are_named(tmp_path):
    state = capface_state(random_capface(seed=16))
    state["zero_convs.3.0.weight"] = torch.zeros(7, 32, 1, 1)
    path = tmp_path / "capface.safetensors"
    save_file(state, path)
    with pytest.raises(caphuman_ext.CheckpointError, match="zero_convs.3.0.weight"):
        caphuman_ext.load_capface(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(caphuman_ext.CheckpointError, match="not found"):
        caphuman_ext.load_capface(tmp_path / "nope.safetensors")
