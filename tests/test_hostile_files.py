"""Hostile model files: no pickled code ever runs, no small file allocates gigabytes, no mesh takes minutes.

A corpus of payload files (every pickle protocol, every layout torch and numpy read, every loader) must be refused
with a message naming the file, or — for trojans inside otherwise valid checkpoints — load without running; a
marker file the payloads would create never appears. Files that declare hostile sizes are refused before
allocating. Property-based fuzzing (hypothesis) mixes payloads, hostile sizes and byte corruption.

CI runs a few dozen fuzz examples per property; a longer run (on a workstation or the device machine):

    CAPHUMAN_FUZZ_EXAMPLES=5000 python -m pytest -q tests/test_hostile_files.py -k fuzz
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import caphuman_ext
from caphuman_ext.checkpoint import CheckpointError, load_capface, read_clip_vision_state_dict
from caphuman_ext.config import ConfigError, derive_config
from caphuman_ext.convert import main as convert_main
from preprocessors.head.encoder import DecaEncoder
from preprocessors.head.flame import Flame
from preprocessors.head.mesh import load_obj
from preprocessors.head.rasterizer import MeshTooComplexError, pair_budget, rasterize
from preprocessors.head.texture import FlameTexture
from safe_files.flame_pickle import load_object_npy, load_pickle
from safe_files.head_limits import HeadFileError
from safe_files.weights import load_pickled_weights, load_state_dict
from tests.core_helpers import random_capface
from tests.hostile_payloads import (
    PAYLOADS,
    PROTOCOLS,
    Sized,
    SystemPayload,
    deflated_torch_zip,
    legacy_storage_declaring,
    legacy_tar,
    legacy_with_payload_in,
    object_npy,
    object_npy_with_pickle,
    object_npz,
    repeated_calls,
    repeated_embedded_tensors,
    repeated_lists,
    repeated_newobj,
    repeated_reduce,
    shared_references,
    tensor_from_bytes,
    torch_legacy,
    torch_zip,
    torch_zip_with_data_pkl,
    write,
)

REFUSED = (ValueError, RuntimeError, pickle.UnpicklingError)  # what the loaders raise: the UI shows their message
FUZZ_EXAMPLES = int(os.environ.get("CAPHUMAN_FUZZ_EXAMPLES", "30"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=FUZZ_EXAMPLES <= 100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def weight_file_layouts(payload, protocol: int) -> dict[str, bytes]:
    """The payload in every place torch reads a pickle."""
    layouts = {"raw pickle": pickle.dumps(payload, protocol=protocol),
               "zip data.pkl": torch_zip({"state_dict": {"w": payload}}, protocol),
               "legacy data": torch_legacy({"state_dict": {"w": payload}}, protocol),
               "tar pickle": legacy_tar(payload, protocol, "pickle"),
               "tar storages": legacy_tar(payload, protocol, "storages")}
    for position in ("magic", "protocol", "sys_info"):
        layouts[f"legacy {position}"] = legacy_with_payload_in(position, payload, protocol)
    return layouts


def refused(call, path: Path, marker: Path, name_in_message: bool = True) -> BaseException:
    with pytest.raises(REFUSED) as error:
        call(path)
    assert not marker.exists(), f"payload ran: {path.name}"
    if name_in_message:
        assert path.name in str(error.value), str(error.value)
    return error.value


# --- 1. payloads: every protocol x layout x payload kind, through the checkpoint loader ------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.__name__)
def test_payload_corpus_is_refused_by_the_checkpoint_loader(tmp_path, protocol, payload):
    marker = tmp_path / "marker"
    for layout, data in weight_file_layouts(payload(marker), protocol).items():
        path = write(tmp_path / "caphuman.ckpt", data)
        refused(load_capface, path, marker)
        assert not marker.exists(), layout


def _convert(path: Path) -> None:
    try:
        convert_main([str(path), str(path.with_suffix(".out.safetensors"))])
    except SystemExit as exit_:
        raise CheckpointError(f"converter exited {exit_.code}") from None


LOADERS = {  # loader, file name, whether its messages name the file
    "load_capface": (load_capface, "caphuman.ckpt", True),
    "read_clip_vision_state_dict": (read_clip_vision_state_dict, "caphuman.ckpt", True),
    "load_state_dict": (load_state_dict, "caphuman.pth", True),
    "load_pickled_weights": (load_pickled_weights, "weights.pt", True),
    "convert": (_convert, "caphuman.ckpt", False),
    "deca_model.tar": (DecaEncoder.from_file, "deca_model.tar", True),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_every_weight_loader_refuses_payloads(tmp_path, loader, protocol, capsys):
    call, filename, names_file = LOADERS[loader]
    marker = tmp_path / "marker"
    for layout, data in weight_file_layouts(SystemPayload(marker), protocol).items():
        path = write(tmp_path / filename, data)
        if layout in ("zip data.pkl", "legacy data") and loader in ("load_pickled_weights", "load_state_dict",
                                                                    "read_clip_vision_state_dict"):
            call(path)  # a dict holding an inert placeholder: read (no tensors in it), nothing ran
            assert not marker.exists(), layout
            continue
        refused(call, path, marker, names_file)


@pytest.mark.parametrize("loader", ["facenet", "parsing"])
def test_identity_weight_loaders_refuse_payloads(tmp_path, loader):
    from preprocessors.identity.face_parsing import load_parsing_model
    from preprocessors.identity.facenet import load_facenet

    call = load_facenet if loader == "facenet" else load_parsing_model
    marker = tmp_path / "marker"
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        for layout, data in weight_file_layouts(SystemPayload(marker), protocol).items():
            path = write(tmp_path / "weights.pth", data)
            refused(call, path, marker, name_in_message=layout not in ("zip data.pkl", "legacy data", "tar pickle"))


@pytest.fixture(scope="module")
def capface():
    return random_capface(seed=3)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_trojan_checkpoint_loads_as_capface_without_running(tmp_path, capface, layout, protocol):
    """A working CapFace with payloads beside, inside and around its weights: loaded, nothing ran."""
    marker = tmp_path / "marker"
    state = {(k if k.startswith(("id_linear.", "img_linear.")) else f"control_model.{k}"): v
             for k, v in capface.state_dict().items()}
    state["control_model.evil"] = SystemPayload(marker)
    checkpoint = {"state_dict": state, "evil": SystemPayload(marker), "callbacks": [SystemPayload(marker)],
                  "hparams": OrderedDict(x=SystemPayload(marker))}
    path = write(tmp_path / "caphuman.ckpt", (torch_zip if layout == "zip" else torch_legacy)(checkpoint, protocol))
    loaded = load_capface(path)
    assert not marker.exists()
    for key, value in capface.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


# --- FLAME pickles, object .npy, .npz, tensors embedded in numpy pickles ---------------------------------------

@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.__name__)
def test_flame_files_refuse_payloads(tmp_path, protocol, payload):
    marker = tmp_path / "marker"
    evil = payload(marker)
    pkl = write(tmp_path / "generic_model.pkl", pickle.dumps({"f": np.zeros((1, 3)), "evil": evil}, protocol=protocol))
    refused(load_pickle, pkl, marker)
    if protocol >= 2:  # numpy writes object .npy with protocol 3; older protocols are read the same way
        npy = write(tmp_path / "landmark_embedding.npy", object_npy({"a": evil}, protocol))
        refused(load_object_npy, npy, marker)
        embedded = write(tmp_path / "landmark_embedding.npy",
                         object_npy({"t": tensor_from_bytes(pickle.dumps(evil, protocol=protocol))}, protocol))
        refused(load_object_npy, embedded, marker)
        npz = write(tmp_path / "FLAME_texture.npz", object_npz(evil, protocol))
        refused(FlameTexture.from_file, npz, marker)


# --- 2. hostile sizes ----------------------------------------------------------------------------------------------

HOSTILE_SIZES = {"bytearray": Sized(bytearray, 10**10), "bytes": Sized(bytes, 10**10),
                 "range": Sized(range, 10**12)}


@pytest.mark.parametrize("kind", HOSTILE_SIZES)
def test_hostile_constructor_sizes_are_refused(tmp_path, kind):
    marker = tmp_path / "marker"
    value = HOSTILE_SIZES[kind]
    pkl = write(tmp_path / "generic_model.pkl", pickle.dumps(value, protocol=2))
    assert len(pkl.read_bytes()) < 64
    refused(load_pickle, pkl, marker)
    for layout in ("zip data.pkl", "legacy data"):
        data = (torch_zip if layout == "zip data.pkl" else torch_legacy)({"state_dict": {"w": value}}, 2)
        path = write(tmp_path / "caphuman.ckpt", data)
        if kind == "range":  # an unknown-to-weights global: an inert placeholder, never called
            assert load_state_dict(path)[0] == {}
        else:
            refused(load_state_dict, path, marker)
    for position in ("magic", "sys_info"):
        refused(load_capface, write(tmp_path / "caphuman.ckpt", legacy_with_payload_in(position, value)), marker)


AMPLIFIERS = {"3000 x bytearray(1 MiB)": repeated_calls, "200 x list(<1 MiB>)": repeated_lists,
              "200 x NEWOBJ tuple(<1 MiB>)": repeated_newobj, "10,000 references to 100,000 items": shared_references}
AMPLIFIED_FILES = {  # loader in tests/alloc_probe.py, file as the loader looks for it, layout
    "CapFace .ckpt plain pickle": ("capface", "caphuman.ckpt", lambda p: p),
    "CapFace .ckpt torch zip data.pkl": ("capface", "caphuman.ckpt", torch_zip_with_data_pkl),
    "CLIP clip_vitl.pth plain pickle": ("clip", "clip_vision/clip_vitl.pth", lambda p: p),
    "CLIP clip_vitl.pth torch zip data.pkl": ("clip", "clip_vision/clip_vitl.pth", torch_zip_with_data_pkl),
    "FLAME generic_model.pkl": ("flame", "generic_model.pkl", lambda p: p),
    "landmark_embedding.npy": ("landmarks", "landmark_embedding.npy", object_npy_with_pickle),
}
AMPLIFIED_LIMIT_MB = 64


def _probe(tmp_path: Path, cases: list[dict]) -> list[dict]:
    """tests/alloc_probe.py in a child process (address space capped at its baseline + 1 GiB)."""
    spec = write(tmp_path / "cases.json", json.dumps(cases).encode())
    done = subprocess.run([sys.executable, "-m", "tests.alloc_probe", str(spec)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_amplified_allocations_are_refused_by_every_loader_before_memory_is_taken(tmp_path):
    """A few bytes per allow-listed call, thousands of calls: every loader refuses it with a message naming the
    file, within 64 MB above its baseline (measured in a child process; times printed, not asserted)."""
    cases = []
    for amplifier, build in AMPLIFIERS.items():
        for kind, (loader, name, layout) in AMPLIFIED_FILES.items():
            folder = tmp_path / f"{len(cases)}"
            path, warm = folder / "hostile" / name, folder / "warm" / name
            path.parent.mkdir(parents=True)
            warm.parent.mkdir(parents=True)
            write(path, layout(build()))
            write(warm, layout(build(2, 16)))  # the same file with two 16-byte calls: imports and caches warmed
            cases.append({"loader": loader, "path": str(path), "warm": str(warm), "case": f"{kind}, {amplifier}",
                          "size": path.stat().st_size})
    results = _probe(tmp_path, cases)
    for case, result in zip(cases, results):
        print(f"{case['case']}: {case['size']:,} bytes -> {result['outcome']} ({result['error']}) in "
              f"{result['seconds']:.3f} s, peak RSS +{result['peak_rss_delta_mb']} MB")
    for case, result in zip(cases, results):
        assert result["outcome"] == "refused" and result["error"] != "MemoryError", (case["case"], result)
        assert Path(case["path"]).name in result["message"], (case["case"], result["message"])
        assert result["peak_rss_delta_mb"] < AMPLIFIED_LIMIT_MB, (case["case"], result)


def test_embedded_torch_files_share_the_budget_of_the_file_they_are_in(tmp_path):
    """One 200 KB torch file embedded once in landmark_embedding.npy, loaded 500 times (100 MB of tensors): the
    loads count together, so the .npy is refused (it was read, 500 tensors)."""
    embedded = torch_legacy(torch.zeros(50_000))
    path = write(tmp_path / "landmark_embedding.npy", object_npy_with_pickle(repeated_embedded_tensors(embedded, 500)))
    assert path.stat().st_size < 2 * len(embedded)
    error = refused(load_object_npy, path, tmp_path / "marker")
    assert "may" in str(error) and "MiB" in str(error), str(error)


def test_more_calls_than_a_weight_pickle_makes_are_refused(tmp_path):
    """30,000 calls that allocate nothing (`bool()`, 5 bytes each): more than a pickle of that size makes."""
    data = repeated_reduce("builtins", "bool", b")", 30_000)
    for name, call in (("generic_model.pkl", load_pickle), ("caphuman.ckpt", load_state_dict)):
        error = refused(call, write(tmp_path / name, data), tmp_path / "marker")
        assert "constructor calls" in str(error), str(error)


def test_a_sparse_matrix_is_densified_only_at_the_shape_it_must_have(tmp_path, deca_assets, monkeypatch):  # noqa: F811
    """A J_regressor of 6000 x 6000 (a few bytes sparse, 288 MB dense) is refused by its declared shape."""
    from safe_files import flame_pickle

    with open(deca_assets / "generic_model.pkl", "rb") as handle:
        base = pickle.load(handle)  # our own synthetic file
    path = _write_flame(tmp_path, {**base, "J_regressor": sp.csc_matrix((6000, 6000), dtype=np.float64)})
    densified = []
    real = flame_pickle.SparseMatrix.toarray
    monkeypatch.setattr(flame_pickle.SparseMatrix, "toarray", lambda self, *a: densified.append(self.shape()) or
                        real(self, *a))
    with pytest.raises(HeadFileError, match="generic_model.pkl: 'J_regressor'.*6000"):
        Flame.from_files(path, deca_assets / "landmark_embedding.npy")
    assert densified == []


def test_storage_larger_than_the_file_is_refused(tmp_path):
    path = write(tmp_path / "caphuman.ckpt", legacy_storage_declaring(10**11))
    error = refused(load_state_dict, path, tmp_path / "marker")
    assert "declares" in str(error)


def test_tar_storage_larger_than_the_file_is_refused(tmp_path):
    import tarfile

    storages = pickle.dumps(1, protocol=2) + pickle.dumps(("0", "cpu", torch.FloatStorage), protocol=2)
    storages += struct.pack("<q", 10**11)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in (("storages", storages), ("tensors", pickle.dumps(0)), ("pickle", pickle.dumps({}))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path = write(tmp_path / "deca_model.tar", buffer.getvalue())
    error = refused(load_pickled_weights, path, tmp_path / "marker")
    assert "more than the file holds" in str(error)


def test_compressed_torch_zip_is_refused_before_decompressing(tmp_path):
    data = deflated_torch_zip(8 << 20)
    assert len(data) < 1 << 20  # 8 MB of tensor in < 1 MB of file
    for name, call in (("deca_model.tar", DecaEncoder.from_file), ("caphuman.ckpt", load_capface)):
        error = refused(call, write(tmp_path / name, data), tmp_path / "marker")
        assert "compressed" in str(error)


def test_tensor_expanded_beyond_its_storage_is_refused(tmp_path):
    expanded = torch.zeros(1).expand(10**6, 10**6)  # 10^12 elements over 4 bytes
    for data in (torch_zip({"w": expanded}), torch_legacy({"w": expanded})):
        error = refused(load_state_dict, write(tmp_path / "caphuman.pth", data), tmp_path / "marker")
        assert "elements over a storage" in str(error)


def _minimal_capface_keys() -> dict[str, torch.Tensor]:
    return {k: torch.zeros(1) for k in ("input_hint_block.0.weight", "mask_predict.0.weight", "id_linear.weight",
                                        "img_linear.weight")}


def test_safetensors_header_is_bounded_before_the_library_parses_it(tmp_path):
    """A header the library accepts (< 100 MB) but no weight file has, and one larger than the file: refused, by
    the CapFace and the CLIP readers, before parsing."""
    from preprocessors.identity.clip_files import ClipVisionFile, read_clip_vision
    from safe_files.weights import MAX_SAFETENSORS_HEADER

    padded = tmp_path / "caphuman_capface.safetensors"  # with enough tensor bytes for any header under the cap
    tensors = {**_minimal_capface_keys(), "data": torch.zeros(MAX_SAFETENSORS_HEADER * 4)}
    save_file(tensors, padded, metadata={"pad": " " * MAX_SAFETENSORS_HEADER})
    many = tmp_path / "clip_vitl.safetensors"  # 20,000 empty tensors: 1 MB of header for nothing
    save_file({f"t{i}": torch.zeros(0) for i in range(20_000)}, many)
    truncated = tmp_path / "clip-vit-large-patch14.safetensors"
    truncated.write_bytes((10**9).to_bytes(8, "little") + b'{"a": 1}')
    for path, words in ((padded, "header of"), (many, "header of"), (truncated, "more than the")):
        for call in (load_capface, load_state_dict, lambda p: read_clip_vision(ClipVisionFile(p, "folder"))):
            error = refused(call, path, tmp_path / "marker")
            assert words in str(error), str(error)


def test_config_metadata_bomb_is_refused(tmp_path):
    """434 bytes whose metadata asks for a 200000-block network: refused before anything is built."""
    path = tmp_path / "caphuman_capface.safetensors"
    config = {"num_res_blocks": [200000, 1, 1, 1]}
    save_file(_minimal_capface_keys(), path, metadata={"caphuman_capface_config": json.dumps(config)})
    assert path.stat().st_size < 1000
    with pytest.raises(CheckpointError, match="num_res_blocks") as error:
        load_capface(path)
    assert path.name in str(error.value)
    for metadata in ("[" * 100000, '{"num_res_blocks": "abc"}', '{"channel_mult": [1e400]}', "7",
                     '{"model_channels": 1e30}'):
        save_file(_minimal_capface_keys(), path, metadata={"caphuman_capface_config": metadata})
        with pytest.raises(CheckpointError, match=path.name):
            load_capface(path)


def test_config_from_weights_is_bounded():
    state = {f"input_blocks.{i}.0.op.weight": torch.zeros(1) for i in range(1, 10000)}
    state["input_blocks.0.0.weight"] = torch.zeros(320, 4, 3, 3)
    state["input_hint_block.0.weight"] = torch.zeros(16, 9, 3, 3)
    with pytest.raises(ConfigError, match="input blocks"):
        derive_config(state)
    with pytest.raises(ConfigError):
        caphuman_ext.CapFaceConfig(transformer_depth=10**6)


def _write_flame(tmp_path: Path, model: dict) -> Path:
    return write(tmp_path / "generic_model.pkl", pickle.dumps(model, protocol=2))


def test_flame_arrays_are_checked(tmp_path, deca_assets):
    landmarks = deca_assets / "landmark_embedding.npy"
    with open(deca_assets / "generic_model.pkl", "rb") as handle:
        base = pickle.load(handle)  # our own synthetic file: plain numpy and scipy objects to edit
    huge = sp.csc_matrix(np.eye(5, 7))
    huge._shape = (5, 5 * 10**9)  # the pickled shape a sparse J_regressor declares: 186 GiB dense
    nan_template = base["v_template"].copy()
    nan_template[3, 1] = np.nan
    faces = base["f"].copy()
    faces[0, 0] = 10**6
    cases = {"J_regressor": ("J_regressor", huge), "NaN v_template": ("v_template", nan_template),
             "face index": ("f", faces), "kintree": ("kintree_table", np.array([[0, 0, 3, 1, 1], [0, 1, 2, 3, 4]])),
             "shapedirs": ("shapedirs", base["shapedirs"][:, :, :10])}
    marks = np.load(landmarks, allow_pickle=True)[()]  # our own synthetic file
    for case, (key, value) in cases.items():
        if case == "J_regressor":  # through the file: the pickled shape is checked before densifying
            with pytest.raises(HeadFileError, match="generic_model.pkl: 'J_regressor'"):
                Flame.from_files(_write_flame(tmp_path, {**base, key: value}), landmarks)
            continue
        with pytest.raises(HeadFileError, match="generic_model.pkl") as error:
            Flame({**base, key: value}, marks)
        assert key in str(error.value), case
    marks["static_lmk_faces_idx"] = np.array([10**7])
    npy = write(tmp_path / "landmark_embedding.npy", object_npy(marks))
    with pytest.raises(HeadFileError, match="landmark_embedding.npy"):
        Flame.from_files(deca_assets / "generic_model.pkl", npy)


def _object_array_state(shape, items) -> bytes:
    """A pickled object ndarray whose state claims `shape` but carries `items` (numpy itself would crash)."""

    class Array:
        def __reduce__(self):
            return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                    (1, shape, np.dtype(object), False, items))

    return pickle.dumps(Array(), protocol=2)


def test_numpy_states_must_match_their_shape(tmp_path):
    marker = tmp_path / "marker"
    for shape, items in (((10**9,), [1, 2]), ((3,), [1]), ((10**6, 10**6), [])):
        refused(load_pickle, write(tmp_path / "generic_model.pkl", _object_array_state(shape, items)), marker)

    class Raw:
        def __reduce__(self):
            return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                    (1, (10**6, 10**6), np.dtype("f8"), False, b"\0" * 8))

    refused(load_pickle, write(tmp_path / "generic_model.pkl", pickle.dumps(Raw(), protocol=2)), marker)


def _npz(path: Path, arrays: dict[str, tuple[tuple, np.dtype, bytes | None]], compress: bool = False) -> Path:
    """An .npz written member by member; `None` data streams zeros of the declared size (a deflate bomb)."""
    from numpy.lib import format as npy_format

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED,
                         compresslevel=1 if compress else None) as archive:
        for key, (shape, dtype, data) in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                npy_format.write_array_header_1_0(member, {"descr": npy_format.dtype_to_descr(np.dtype(dtype)),
                                                           "fortran_order": False, "shape": shape})
                if data is None:
                    left = int(np.prod(shape)) * np.dtype(dtype).itemsize
                    zeros = bytes(16 << 20)
                    while left:
                        member.write(zeros[:min(left, len(zeros))])
                        left -= min(left, len(zeros))
                else:
                    member.write(data)
    return path


def test_texture_space_is_checked_while_read(tmp_path):
    values = 512 * 512 * 3
    mean = ((1, values), np.float32, np.zeros((1, values), np.float32).tobytes())
    bomb = _npz(tmp_path / "FLAME_texture.npz", {"mean": mean, "tex_dir": ((values, 201), np.float32, None)},
                compress=True)
    assert bomb.stat().st_size < 8 << 20  # 630 MB of zeros
    with pytest.raises(HeadFileError, match="FLAME_texture.npz: 'tex_dir' has shape"):
        FlameTexture.from_file(bomb)
    small = _npz(tmp_path / "FLAME_texture.npz", {"mean": mean, "tex_dir": ((16, 200), np.float32, bytes(12800))})
    with pytest.raises(HeadFileError, match="tex_dir"):
        FlameTexture.from_file(small)
    nan = np.zeros((values, 50), np.float32)
    nan[1000, 3] = np.nan
    path = _npz(tmp_path / "FLAME_texture.npz", {"mean": mean, "tex_dir": ((values, 50), np.float32, nan.tobytes())})
    with pytest.raises(HeadFileError, match="NaN"):
        FlameTexture.from_file(path)


def test_obj_counts_indices_and_uvs_are_checked(tmp_path):
    head = "v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"
    cases = {"out of range": head + "f 1/1 2/2 9/3\n", "NaN uv": head.replace("vt 1 0", "vt nan 0") + "f 1/1 2/2 3/3\n",
             "inf uv": head.replace("vt 1 0", "vt 1 inf") + "f 1/1 2/2 3/3\n", "zero index": head + "f 0/1 2/2 3/3\n",
             "garbage": head + "f a/b 2/2 3/3\n",
             "too many": head + "f " + " ".join(["1/1", "2/2", "3/3"] * 70000) + "\n"}
    for _case, text in cases.items():
        path = tmp_path / "head_template.obj"
        path.write_text(text)
        with pytest.raises(HeadFileError, match="head_template.obj"):
            load_obj(path)
    path.write_text(head + "f 1/1 2/2 3/3\n")
    assert load_obj(path).faces.tolist() == [[0, 1, 2]]


# --- 3. bounded rendering work -----------------------------------------------------------------------------------

def _full_image_triangles(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    tri = torch.tensor([[-1.0, -1.0], [3.0, -1.0], [-1.0, 3.0]])
    verts = torch.cat([torch.cat([tri, torch.full((3, 1), 1.0 + i)], 1) for i in range(count)])[None]
    return verts, torch.arange(3 * count).view(count, 3)


def test_rasterizer_work_is_bounded_by_the_image():
    size = 16
    budget = pair_budget(size, size)
    fits = budget // (size * size)
    verts, faces = _full_image_triangles(fits)
    fragments = rasterize(verts, faces, size, size)
    assert fragments.pairs_evaluated == budget and (fragments.pix_to_face == 0).all()
    verts, faces = _full_image_triangles(fits + 1)
    with pytest.raises(MeshTooComplexError, match="pixel-triangle tests"):
        rasterize(verts, faces, size, size)
    verts, faces = _full_image_triangles(1000)
    with pytest.raises(MeshTooComplexError):
        rasterize(verts, faces, 512, 512)


def test_rasterizer_refuses_non_finite_vertices():
    verts, faces = _full_image_triangles(2)
    for bad in (float("nan"), float("inf")):
        broken = verts.clone()
        broken[0, 4, 0] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            rasterize(broken, faces, 8, 8)


def test_head_mesh_fits_the_budget_and_scrambled_faces_do_not(deca_assets, head_reference):
    """The head needs a few pairs per pixel; its faces joined at random (the hostile OBJ) are refused at once."""
    verts = head_reference["flame.verts"][0]
    centre = (verts.max(0).values + verts.min(0).values) / 2
    extent = (verts.max(0).values - verts.min(0).values)[:2].max() / 2
    screen = (verts - centre) / extent  # the head filling the image
    screen[:, 1] = -screen[:, 1]
    screen[:, 2] += 10
    faces = load_obj(deca_assets / "head_template.obj").faces
    fragments = rasterize(screen[None], faces, 64, 64)
    assert 0 < fragments.pairs_evaluated <= pair_budget(64, 64) // 3
    scrambled = torch.randint(0, verts.shape[0], faces.shape, generator=torch.Generator().manual_seed(0))
    with pytest.raises(MeshTooComplexError):
        rasterize(screen[None], scrambled, 256, 256)


# --- 5. fuzzing ----------------------------------------------------------------------------------------------------

def _leaves(marker: Path):
    hostile = st.sampled_from([Sized(bytearray, 10**10), Sized(bytes, 10**10), Sized(range, 10**12),
                               Sized(bytearray, 10**3)])
    payload = st.sampled_from(PAYLOADS).map(lambda kind: kind(marker))
    plain = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
                      st.binary(max_size=40))
    tensors = st.integers(0, 6).map(lambda n: torch.arange(n, dtype=torch.float32))
    return st.one_of(plain, hostile, payload, tensors)


def _structures(marker: Path):
    return st.recursive(_leaves(marker), lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4),
        st.tuples(inner, inner)), max_leaves=12)


WEIGHT_LAYOUTS = ["zip", "legacy", "legacy magic", "raw", "tar"]


@FUZZ
@given(data=st.data(), protocol=st.sampled_from(list(PROTOCOLS)), layout=st.sampled_from(WEIGHT_LAYOUTS))
def test_fuzz_weight_files(data, protocol, layout):
    with tempfile.TemporaryDirectory() as folder:
        marker = Path(folder) / "marker"
        value = data.draw(_structures(marker))
        try:
            raw = {"zip": lambda: torch_zip({"state_dict": value}, max(protocol, 2)),
                   "legacy": lambda: torch_legacy({"state_dict": value}, max(protocol, 2)),
                   "legacy magic": lambda: legacy_with_payload_in("magic", value, protocol),
                   "raw": lambda: pickle.dumps(value, protocol=protocol),
                   "tar": lambda: legacy_tar(value, protocol)}[layout]()
        except (pickle.PicklingError, TypeError, ValueError, RuntimeError):
            return  # not picklable this way (e.g. tensors with protocol 0)
        path = write(Path(folder) / "caphuman.ckpt", raw)
        try:
            load_state_dict(path)
        except REFUSED as error:
            assert path.name in str(error)
        assert not marker.exists()


@FUZZ
@given(data=st.data(), protocol=st.sampled_from([2, 3, 4, 5]), kind=st.sampled_from(["pkl", "npy"]))
def test_fuzz_flame_pickles(data, protocol, kind):
    with tempfile.TemporaryDirectory() as folder:
        marker = Path(folder) / "marker"
        value = data.draw(_structures(marker))
        arrays = data.draw(st.lists(st.sampled_from([np.zeros(3), np.arange(4, dtype=np.int32).reshape(2, 2),
                                                     sp.csc_matrix(np.eye(3)), np.array(["a"], dtype=object)]),
                                    max_size=3))
        value = {"v": value, "arrays": arrays}
        if kind == "pkl":
            path, load = write(Path(folder) / "generic_model.pkl", pickle.dumps(value, protocol=protocol)), load_pickle
        else:
            path, load = write(Path(folder) / "landmark_embedding.npy", object_npy(value, protocol)), load_object_npy
        try:
            load(path)
        except REFUSED as error:
            assert path.name in str(error)
        assert not marker.exists()


def _valid_weight_files() -> dict[str, bytes]:
    state = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(4, dtype=torch.float16)}
    return {"zip": torch_zip({"state_dict": state}), "legacy": torch_legacy({"state_dict": state}),
            "flame": pickle.dumps({"f": np.arange(6).reshape(2, 3), "J": sp.csc_matrix(np.eye(3))}, protocol=2)}


@FUZZ
@given(which=st.sampled_from(["zip", "legacy", "flame"]),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_fuzz_corrupted_files(which, edits, cut):
    """Byte flips and truncation of valid files: read or refused with a message, never a crash or a hang."""
    data = bytearray(_valid_weight_files()[which])
    for position, byte in edits:
        data[int(position * len(data))] = byte
    if cut is not None:
        data = data[:int(cut * len(data))]
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder) / ("generic_model.pkl" if which == "flame" else "caphuman.ckpt"), bytes(data))
        try:
            (load_pickle if which == "flame" else load_state_dict)(path)
        except REFUSED as error:  # WeightFileError, ForbiddenPickleError, HeadFileError
            assert path.name in str(error)
