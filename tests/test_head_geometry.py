"""Head geometry stages against the reference run (../shared/parity/head_synthetic_A), and safe file reading."""

from __future__ import annotations

import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from preprocessors.head import codes as head_codes
from preprocessors.head.assets import HeadAssets, MissingHeadAssetError
from preprocessors.head.crop import box_from_landmarks, crop_face, resize_photo
from preprocessors.head.encoder import DecaEncoder
from preprocessors.head.flame import Flame, rodrigues
from preprocessors.head.texture import FlameTexture
from safe_files.flame_pickle import ForbiddenPickleError, load_object_npy, load_pickle


@pytest.mark.parametrize("who", ["identity", "pose"])
def test_crop_matches_reference(deca_assets, head_reference, who):
    photo = resize_photo(np.asarray(Image.open(deca_assets / f"{who}.png")), 256)
    crop = crop_face(photo, box_from_landmarks(np.loadtxt(deca_assets / f"{who}.txt")))
    for key in ("image", "tform", "original_image"):
        torch.testing.assert_close(getattr(crop, key), head_reference[f"crop.{who}.{key}"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("who", ["identity", "pose"])
def test_encoder_matches_reference(deca_assets, head_reference, who):
    encoder = DecaEncoder.from_file(deca_assets / "deca_model.tar")
    with torch.no_grad():
        codes = encoder.encode(head_reference[f"crop.{who}.image"][None])
    for key in ("raw", "shape", "tex", "exp", "pose", "cam", "light"):
        torch.testing.assert_close(codes[key], head_reference[f"encode.{who}.{key}"], atol=1e-5, rtol=1e-5)


def test_flame_and_texture_match_reference(deca_assets, head_reference):
    flame = Flame.from_files(deca_assets / "generic_model.pkl", deca_assets / "landmark_embedding.npy")
    ref = {k: head_reference[f"encode.identity.{k}"] for k in ("shape", "exp", "pose", "tex")}
    verts, lmk2d, lmk3d = flame(ref["shape"], ref["exp"], ref["pose"])
    torch.testing.assert_close(verts, head_reference["flame.verts"], atol=1e-6, rtol=0)
    torch.testing.assert_close(lmk2d, head_reference["flame.landmarks2d"], atol=1e-6, rtol=0)
    torch.testing.assert_close(lmk3d, head_reference["flame.landmarks3d"], atol=1e-6, rtol=0)
    albedo = FlameTexture.from_file(deca_assets / "FLAME_texture.npz")(ref["tex"])
    torch.testing.assert_close(albedo, head_reference["texture.albedo_uv"], atol=1e-5, rtol=0)


def test_chumpy_pickle_reads_without_chumpy(tmp_path):
    class Ch:  # pickled under the module name chumpy.ch, as the real generic_model.pkl
        def __init__(self, x):
            self.x = x

        def __getstate__(self):
            return {"x": self.x, "_dirty_vars": set()}

    fake = types.ModuleType("chumpy.ch")
    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    fake.Ch = Ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = types.ModuleType("chumpy"), fake
    try:
        data = {"shapedirs": Ch(np.arange(12.0).reshape(2, 3, 2)), "f": np.array([[0, 1, 2]], dtype=np.uint32)}
        path = tmp_path / "generic_model.pkl"
        path.write_bytes(pickle.dumps(data, protocol=2))
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    loaded = load_pickle(path)
    assert isinstance(loaded["shapedirs"], np.ndarray) and loaded["shapedirs"].shape == (2, 3, 2)
    assert "chumpy" not in sys.modules


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"f": _Exploit(str(marker))}, protocol=2))
    with pytest.raises(ForbiddenPickleError, match="refusing"):
        load_pickle(path)
    npy = tmp_path / "landmark_embedding.npy"
    np.save(npy, np.array({"x": _Exploit(str(marker))}, dtype=object), allow_pickle=True)
    with pytest.raises(ForbiddenPickleError):
        load_object_npy(npy)
    assert not marker.exists()


def test_landmark_embedding_with_torch_tensors_loads(deca_assets):
    data = load_object_npy(deca_assets / "landmark_embedding.npy")
    assert isinstance(data["dynamic_lmk_faces_idx"], torch.Tensor) and data["dynamic_lmk_faces_idx"].shape == (79, 17)
    assert isinstance(data["static_lmk_faces_idx"], np.ndarray)


def test_missing_files_are_listed_with_their_source(tmp_path):
    (tmp_path / "head_template.obj").write_text("v 0 0 0\n")
    with pytest.raises(MissingHeadAssetError) as info:
        HeadAssets.find([tmp_path])
    message = str(info.value)
    assert "generic_model.pkl" in message and "flame.is.tue.mpg.de" in message and "deca_model.tar" in message
    assert "head_template.obj —" not in message


def test_deca_tar_without_encoder_is_refused(tmp_path):
    path = tmp_path / "deca_model.tar"
    torch.save({"something": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="E_flame"):
        DecaEncoder.from_file(path)


def test_modes_copy_the_right_codes():
    ident = {"pose": torch.zeros(1, 6), "exp": torch.zeros(1, 50), "light": torch.zeros(1, 9, 3),
             "cam": torch.zeros(1, 3), "tform": torch.eye(3)[None], "shape": torch.ones(1, 100)}
    pose = {k: v + 1 for k, v in ident.items()}
    mixed = head_codes.mix_codes(ident, pose, "position,pose")
    assert torch.equal(mixed["cam"], pose["cam"]) and torch.equal(mixed["tform"], pose["tform"])
    assert torch.equal(mixed["pose"][:, :3], pose["pose"][:, :3]) and torch.equal(mixed["pose"][:, 3:], ident["pose"][:, 3:])
    assert torch.equal(mixed["exp"], ident["exp"]) and torch.equal(mixed["light"], ident["light"])
    assert torch.equal(mixed["shape"], ident["shape"])
    everything = head_codes.mix_codes(ident, pose, "all")
    assert torch.equal(everything["exp"], pose["exp"]) and torch.equal(everything["light"], pose["light"])
    assert torch.equal(ident["pose"], torch.zeros(1, 6))  # inputs untouched
    with pytest.raises(ValueError, match="unknown head-control mode"):
        head_codes.parse_modes("position,tilt")


def test_manual_yaw_is_a_rotation_about_y():
    axis_angle = head_codes.euler_to_axis_angle(30, 0, 0)
    rotation = rodrigues(axis_angle)[0]
    expected = torch.tensor([[np.cos(np.pi / 6), 0, np.sin(np.pi / 6)], [0, 1, 0],
                             [-np.sin(np.pi / 6), 0, np.cos(np.pi / 6)]], dtype=torch.float32)
    torch.testing.assert_close(rotation, expected, atol=1e-5, rtol=0)
    code = {"pose": torch.zeros(1, 6), "exp": torch.ones(1, 50), "light": torch.ones(1, 9, 3)}
    manual = head_codes.apply_manual(code, yaw=30, expression=0.5, jaw_open=0.2, light_direction=(1, 0, 1))
    assert torch.allclose(manual["pose"][:, :3], axis_angle) and manual["pose"][0, 3] == pytest.approx(0.2)
    assert torch.allclose(manual["exp"], torch.full((1, 50), 0.5))
    assert manual["light"][0, 1, 0] > 0 and manual["light"][0, 2].abs().sum() == 0
