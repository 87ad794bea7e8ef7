"""Building CapHuman's networks (cold) never moves the random generators the webui samples from.

The webui draws img2img's VAE-encode noise from torch's global generator: a build between two generations that drew
from it changed the next pictures. Real classes throughout (transformers CLIP, facexlib BiSeNet, facenet-pytorch
MTCNN and InceptionResnetV1, torchvision's ResNet-50 in DECA's encoder) on the synthetic model files.
"""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from caphuman_ext.checkpoint import load_capface
from caphuman_ext.quality.scorer import Scorer
from caphuman_ext.unit.builder import UnitBuilder
from caphuman_ext.unit.params import unit_from_dict
from preprocessors.head.assets import HeadAssets
from preprocessors.head.pipeline import HeadPipeline
from preprocessors.identity import IdentityEncoder, IdentityModelPaths
from tests.core_helpers import random_capface
from tests.inputs import tiny_clip_state

CAPHUMAN_FILE = "caphuman_tiny.safetensors"
MODEL_SUFFIXES = (".pth", ".pt", ".pkl", ".npy", ".obj", ".npz", ".tar")


@pytest.fixture(scope="module")
def models(tmp_path_factory, synthetic, deca_assets):  # noqa: F811
    """A models folder: the synthetic identity and DECA files and a tiny CapHuman file holding its CLIP tower."""
    folder = tmp_path_factory.mktemp("CapHuman")
    for source in list(synthetic.iterdir()) + list(deca_assets.iterdir()):
        if source.suffix in MODEL_SUFFIXES:
            (folder / source.name).symlink_to(source)
    capface = random_capface(seed=3)
    capface.img_linear = torch.nn.Linear(64, 64)  # the tiny CLIP tower has 64 channels
    state = {k: v.contiguous() for k, v in capface.state_dict().items()}
    state.update({f"clip_vision.{k}": v.contiguous() for k, v in tiny_clip_state().items()})
    save_file(state, folder / CAPHUMAN_FILE)
    shutil.copy(synthetic / "identity.png", folder.parent / "identity.png")
    return folder


def _unit(models):
    return unit_from_dict({"enabled": True, "reference_images": [Image.open(models.parent / "identity.png")],
                           "yaw": 20})


def _build_unit(models):
    """What the webui does for a unit: its models, identity context and hint, from cold."""
    builder = UnitBuilder([models], allow_download=False)
    unit = _unit(models)
    builder.prepare(unit, torch.device("cpu"))
    return builder.hint(unit, 64, 64, torch.device("cpu"))


BUILDS = {
    "CapFace": lambda models: load_capface(models / CAPHUMAN_FILE),
    "identity models (CLIP, BiSeNet, MTCNN, FaceNet)": lambda models: IdentityEncoder(IdentityModelPaths(
        clip_vision=models / CAPHUMAN_FILE, folders=[models], allow_download=False))._models(),
    "head models (DECA encoder, FLAME, texture, renderer)": lambda models: HeadPipeline(
        HeadAssets.find([models])).models(),
    "scorer models": lambda models: Scorer([models], allow_download=False).identity_models(),
    "a unit, cold (every model, identity and hint)": lambda models: _build_unit(models),
}


def _states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _assert_same(before: dict, after: dict, what: str) -> None:
    assert torch.equal(before["torch"], after["torch"]), f"{what} advanced torch's CPU generator"
    for device, (old, new) in enumerate(zip(before.get("cuda", []), after.get("cuda", []))):
        assert torch.equal(old, new), f"{what} advanced CUDA device {device}'s generator"
    assert before["numpy"][0] == after["numpy"][0] and np.array_equal(before["numpy"][1], after["numpy"][1]) \
        and before["numpy"][2:] == after["numpy"][2:], f"{what} advanced numpy's global generator"
    assert before["python"] == after["python"], f"{what} advanced Python's random"


@pytest.mark.parametrize("build", BUILDS)
def test_building_leaves_every_global_generator_as_it_was(models, build):
    torch.manual_seed(1234)
    np.random.seed(5)
    random.seed(6)
    before = _states()
    BUILDS[build](models)
    _assert_same(before, _states(), build)


def test_noise_drawn_after_a_cold_build_is_the_noise_drawn_without_it(models):
    """What img2img's VAE-encode sees: the same seed gives the same noise whether CapHuman built its models (and
    scored a picture) in between or not."""
    torch.manual_seed(1234)
    expected = torch.randn(2, 4, 8, 8)
    torch.manual_seed(1234)
    _build_unit(models)
    Scorer([models], allow_download=False).score(Image.open(models.parent / "identity.png"), [_unit(models)])
    assert torch.equal(torch.randn(2, 4, 8, 8), expected)
