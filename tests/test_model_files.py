"""Model files as users have them: CLIP ViT-L/14 found in each real layout (tiny files, real key names), the one table
of free files with size and SHA-256, verification with cached hashes, downloads, and the status listing."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from preprocessors.head.assets import FLAME_SITE
from preprocessors.identity import (
    IdentityEncoder,
    IdentityModelPaths,
    build_clip_vision,
    clip_pixel_values,
    clip_tokens,
    weights,
)
from preprocessors.identity.clip_files import (
    ClipSearch,
    controlnet_annotator_dirs,
    find_clip_vision,
    hub_cache_dirs,
    locate_clip_vision,
    read_clip_vision,
)
from tests.generated_data import link_or_copy

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def isolated_hashes(tmp_path, monkeypatch):
    """Each test gets its own hash cache (the real one lives in the extension's models/ folder)."""
    monkeypatch.setattr(weights, "HASHES", weights.HashCache(tmp_path / "hashes.json"))


@pytest.fixture(scope="module")
def clip_model_state() -> dict[str, torch.Tensor]:
    """A tiny transformers CLIPModel: the key names of openai/clip-vit-large-patch14's pytorch_model.bin and
    model.safetensors (`vision_model.*`, `text_model.*`, `visual_projection`, `text_projection`, `logit_scale`)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=1, vocab_size=100, max_position_embeddings=16,
                                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
                        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=1, image_size=224, patch_size=14,
                                           hidden_act="quick_gelu"),
                        projection_dim=16)
    return {k: v.contiguous() for k, v in CLIPModel(config).state_dict().items()}


def vision_part(state):
    return {k: v for k, v in state.items() if k.startswith("vision_model.")}


def capface_state() -> dict[str, torch.Tensor]:
    """Stand-in CapHuman weights (only the key layout matters to the CLIP search)."""
    return {"control_model.input_hint_block.0.weight": torch.zeros(2, 9, 3, 3), "id_linear.weight": torch.zeros(4, 4)}


def hub_cache(root: Path, state, filename="model.safetensors", revision=REVISION) -> Path:
    """The huggingface_hub cache layout: blobs named by SHA-256, snapshot files linking to them, refs/main."""
    repo = root / "models--openai--clip-vit-large-patch14"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "snapshots" / revision).mkdir(parents=True)
    staging = root / "staging" / filename
    staging.parent.mkdir(exist_ok=True)
    if filename.endswith(".safetensors"):
        save_file(state, staging)
    else:
        torch.save(state, staging)
    blob = repo / "blobs" / weights.sha256(staging)
    staging.rename(blob)
    os.symlink(Path("..", "..", "blobs", blob.name), repo / "snapshots" / revision / filename)
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision / filename


def assert_same_tower(state, expected):
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)


# each layout -------------------------------------------------------------------------------------------------
def test_tower_inside_the_caphuman_file(tmp_path, clip_model_state):
    ckpt = tmp_path / "caphuman.ckpt"
    state = capface_state()
    state.update({f"control_cond_stage_model.transformer.{k}": v for k, v in vision_part(clip_model_state).items()})
    torch.save({"state_dict": state}, ckpt)
    found = find_clip_vision(ClipSearch(ckpt, hub_caches=[]))
    assert found.where == "CapHuman file" and found.path == ckpt
    assert_same_tower(read_clip_vision(found), vision_part(clip_model_state))


def test_tower_inside_the_converted_file(tmp_path, clip_model_state):
    converted = tmp_path / "caphuman_capface.safetensors"
    save_file({"id_linear.weight": torch.zeros(4, 4),
               **{f"clip_vision.{k}": v for k, v in vision_part(clip_model_state).items()}}, converted)
    found = find_clip_vision(ClipSearch(converted, hub_caches=[]))
    assert found.where == "CapHuman file"
    assert_same_tower(read_clip_vision(found), vision_part(clip_model_state))


def test_clip_file_in_the_caphuman_folder_loads_only_the_vision_tower(tmp_path, clip_model_state):
    ckpt = tmp_path / "caphuman.ckpt"
    torch.save({"state_dict": capface_state()}, ckpt)
    save_file(clip_model_state, tmp_path / "clip-vit-large-patch14.safetensors")
    found = find_clip_vision(ClipSearch(ckpt, [tmp_path], hub_caches=[]))
    assert found.where == "CapHuman model folder"
    state = read_clip_vision(found)
    assert_same_tower(state, vision_part(clip_model_state))  # no text_model.*, no projections


def test_sd_webui_controlnet_copy_is_found(tmp_path, clip_model_state):
    webui = tmp_path / "webui"
    downloads = webui / "extensions" / "sd-webui-controlnet" / "annotator" / "downloads"
    (downloads / "clip_vision").mkdir(parents=True)
    torch.save(clip_model_state, downloads / "clip_vision" / "clip_vitl.pth")  # = the hub's pytorch_model.bin
    annotators = controlnet_annotator_dirs([webui / "extensions"])
    assert annotators == [downloads]
    found = find_clip_vision(ClipSearch(None, [tmp_path / "CapHuman"], annotators, hub_caches=[]))
    assert found.where == "sd-webui-controlnet"
    assert_same_tower(read_clip_vision(found), vision_part(clip_model_state))


def test_controlnet_annotator_models_path_and_setting(tmp_path, clip_model_state):
    custom = tmp_path / "annotators"
    (custom / "clip_vision").mkdir(parents=True)
    torch.save(clip_model_state, custom / "clip_vision" / "clip_vitl.pth")
    assert controlnet_annotator_dirs(annotator_models_path=str(custom)) == [custom]
    assert controlnet_annotator_dirs(annotator_models_path="annotators", data_path=tmp_path) == [custom]
    assert controlnet_annotator_dirs(annotator_models_path="x", modules_path_setting=str(custom))[0] == custom
    found = find_clip_vision(ClipSearch(annotator_dirs=controlnet_annotator_dirs(annotator_models_path=str(custom)),
                                        hub_caches=[]))
    assert found.path == custom / "clip_vision" / "clip_vitl.pth"


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_hugging_face_cache_is_found_through_the_environment(tmp_path, monkeypatch, clip_model_state, filename):
    snapshot = hub_cache(tmp_path / "hf" / "hub", clip_model_state, filename)
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache_dirs()[0] == tmp_path / "hf" / "hub"
    found = find_clip_vision(ClipSearch())
    assert found.where == "Hugging Face cache" and found.path == snapshot
    assert_same_tower(read_clip_vision(found), vision_part(clip_model_state))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_dirs()[0] == tmp_path / "elsewhere"


def test_search_order(tmp_path, clip_model_state):
    """CapHuman file > CapHuman folders > sd-webui-controlnet > Hugging Face cache."""
    cache = tmp_path / "hub"
    hub_cache(cache, clip_model_state)
    annotators = tmp_path / "annotators"
    (annotators / "clip_vision").mkdir(parents=True)
    torch.save(clip_model_state, annotators / "clip_vision" / "clip_vitl.pth")
    folder = tmp_path / "CapHuman"
    folder.mkdir()
    search = ClipSearch(None, [folder], [annotators], [cache])
    assert find_clip_vision(search).where == "sd-webui-controlnet"
    save_file(clip_model_state, folder / "clip-vit-large-patch14.safetensors")
    assert find_clip_vision(search).where == "CapHuman model folder"
    ckpt = folder / "caphuman.safetensors"
    save_file({f"clip_vision.{k}": v for k, v in vision_part(clip_model_state).items()}, ckpt)
    assert find_clip_vision(dataclasses.replace(search, caphuman_file=ckpt)).where == "CapHuman file"
    assert find_clip_vision(ClipSearch(None, [tmp_path / "empty"], [], [tmp_path / "none"])) is None


def test_nothing_found_and_no_download_names_the_file_the_folder_and_the_url(tmp_path):
    ckpt = tmp_path / "caphuman.ckpt"
    torch.save({"state_dict": capface_state()}, ckpt)
    with pytest.raises(weights.ModelFileMissingError) as error:
        locate_clip_vision(ClipSearch(ckpt, [tmp_path / "CapHuman"], hub_caches=[]))
    message = str(error.value)
    assert "clip-vit-large-patch14.safetensors" in message and str(tmp_path / "CapHuman") in message
    assert weights.CLIP_VISION.url in message and "automatic downloads" in message


def published_as(model: weights.ModelFile, path: Path) -> weights.ModelFile:
    """`model` as if `path` (a tiny file) were what its URL serves."""
    return dataclasses.replace(model, published=(weights.Published(path.as_uri(), path.stat().st_size,
                                                                   weights.sha256(path)),))


def test_download_when_allowed_keeps_the_verified_file_and_reads_the_vision_tower(tmp_path, monkeypatch,
                                                                                   clip_model_state):
    served = tmp_path / "served" / "model.safetensors"
    served.parent.mkdir()
    save_file(clip_model_state, served)
    monkeypatch.setattr(weights, "CLIP_VISION", published_as(weights.CLIP_VISION, served))
    seen = []
    found = locate_clip_vision(ClipSearch(None, [tmp_path / "CapHuman"], hub_caches=[], allow_download=True),
                               progress=lambda done, total: seen.append((done, total)))
    assert found.path == tmp_path / "CapHuman" / "clip-vit-large-patch14.safetensors" and found.where == "downloaded"
    assert seen[-1] == (served.stat().st_size, served.stat().st_size)
    assert_same_tower(read_clip_vision(found), vision_part(clip_model_state))
    # the next search finds it in the folder: nothing is downloaded again
    assert find_clip_vision(ClipSearch(None, [tmp_path / "CapHuman"], hub_caches=[])).path == found.path


def test_download_with_other_bytes_is_not_kept(tmp_path, monkeypatch):
    served = tmp_path / "served.pth"
    served.write_bytes(b"not the published file")
    model = dataclasses.replace(weights.FACE_PARSING, published=(weights.Published(served.as_uri(), 22, "0" * 64),))
    with pytest.raises(weights.ModelFileCorruptError, match="not the published file"):
        weights.download(model, tmp_path / "models")
    assert not list((tmp_path / "models").iterdir())  # neither the file nor a .part


@pytest.mark.parametrize("layout", ["sd-webui-controlnet", "Hugging Face cache"])
def test_identity_from_a_checkpoint_without_clip(tmp_path, clip_model_state, synthetic, layout):
    """Acceptance: a caphuman.ckpt without CLIP keys, plus either sd-webui-controlnet's clip_vitl.pth or only a
    Hugging Face cache -> identity tokens computed with that file's vision tower."""
    models = tmp_path / "CapHuman"
    models.mkdir()
    for source in synthetic.iterdir():  # the run's synthetic identity models, linked (they are only read)
        link_or_copy(source, models / source.name)
    ckpt = models / "caphuman.ckpt"
    torch.save({"state_dict": capface_state()}, ckpt)
    annotators, caches = [], []
    if layout == "sd-webui-controlnet":
        annotators = [tmp_path / "downloads"]
        (annotators[0] / "clip_vision").mkdir(parents=True)
        torch.save(clip_model_state, annotators[0] / "clip_vision" / "clip_vitl.pth")
    else:
        caches = [tmp_path / "hub"]
        hub_cache(caches[0], clip_model_state, "pytorch_model.bin")
    paths = IdentityModelPaths(clip_vision=ckpt, folders=[models], allow_download=False,
                               annotator_dirs=annotators, hub_caches=caches)
    identity = IdentityEncoder(paths).encode(Image.open(models / "identity.png"))
    expected = clip_tokens(build_clip_vision(vision_part(clip_model_state)), clip_pixel_values(identity.face_only))
    assert identity.clip_tokens.shape == (1, 257, 64)
    torch.testing.assert_close(identity.clip_tokens, expected, atol=1e-5, rtol=0)


# the table, verification, hashes -------------------------------------------------------------------------------
def test_every_free_file_has_url_size_and_sha256():
    assert set(weights.FREE_FILES) == {"face_parsing", "facenet", "clip_vision"}
    for model in weights.FREE_FILES.values():
        for published in model.published:
            assert published.url.startswith("https://") and published.size > 1_000_000
            assert len(published.sha256) == 64 and int(published.sha256, 16) >= 0
        assert model.licence and model.about
    assert weights.FACE_PARSING.sha256 == "468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567"
    assert weights.FACE_PARSING.size == 53_289_463


def test_hashes_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    path = tmp_path / "79999_iter.pth"
    path.write_bytes(b"x" * 1000)
    model = published_as(weights.FACE_PARSING, path)
    reads = []
    real = weights.sha256
    monkeypatch.setattr(weights, "sha256", lambda p: reads.append(p) or real(p))
    assert weights.verify(path, model).verified is True
    assert weights.verify(path, model).verified is True and len(reads) == 1
    assert weights.HashCache(tmp_path / "hashes.json").cached(path) == model.sha256  # survives a restart
    path.write_bytes(b"y" * 1000)
    os.utime(path, ns=(1, 1))
    assert weights.verify(path, model, compute=False).verified is None  # changed: not known without reading
    assert weights.verify(path, model).verified is False and len(reads) == 2


def test_a_hub_blob_is_verified_by_its_bytes_not_its_name(tmp_path, monkeypatch, clip_model_state):
    """A link whose target is named after the published SHA-256 is read: other bytes under that name differ."""
    monkeypatch.setattr(weights, "HASHES", weights.HashCache(None))
    snapshot = hub_cache(tmp_path, clip_model_state)
    model = dataclasses.replace(weights.CLIP_VISION, published=(
        weights.Published("https://x", 1, snapshot.resolve().name),))
    assert weights.verify(snapshot, model).verified is True  # the blob's bytes do have that hash
    fake = tmp_path / "fake" / "blobs" / model.sha256
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"not the published file")
    link = tmp_path / "fake" / "model.safetensors"
    os.symlink(fake, link)
    check = weights.verify(link, model)
    assert check.verified is False and check.sha256 == weights.sha256(fake)
    assert weights.verify(link, model, compute=False).verified is False  # the hash of its bytes, now known


def test_a_file_with_other_bytes_is_used_with_a_clear_warning(tmp_path, caplog):
    (tmp_path / "79999_iter.pth").write_bytes(b"re-saved copy")
    with caplog.at_level(logging.WARNING, logger="caphuman"):
        path = weights.ensure(weights.FACE_PARSING, [tmp_path], allow_download=True)
    assert path == tmp_path / "79999_iter.pth" and path.read_bytes() == b"re-saved copy"  # not replaced
    assert weights.FACE_PARSING.sha256 in caplog.text and weights.FACE_PARSING.url in caplog.text


def test_missing_without_download_names_the_file_the_folder_and_the_url(tmp_path):
    with pytest.raises(weights.ModelFileMissingError) as error:
        weights.ensure(weights.FACENET_VGGFACE2, [tmp_path], allow_download=False)
    message = str(error.value)
    assert "20180402-114759-vggface2.pt" in message and str(tmp_path) in message
    assert weights.FACENET_VGGFACE2.url in message


def test_converted_file_keeps_the_tower_it_found(tmp_path, clip_model_state):
    from caphuman_ext.convert import convert
    from tests.core_helpers import random_capface

    capface = random_capface(seed=1)
    ckpt = tmp_path / "caphuman.ckpt"
    torch.save({"state_dict": {f"control_model.{k}" if not k.startswith(("id_linear", "img_linear")) else k: v
                               for k, v in capface.state_dict().items()}}, ckpt)
    annotators = tmp_path / "downloads"
    (annotators / "clip_vision").mkdir(parents=True)
    torch.save(clip_model_state, annotators / "clip_vision" / "clip_vitl.pth")
    out = tmp_path / "caphuman_capface.safetensors"
    counts = convert(ckpt, out, clip_search=ClipSearch(annotator_dirs=[annotators], hub_caches=[]))
    assert counts["clip_vision"] == len(vision_part(clip_model_state))
    found = find_clip_vision(ClipSearch(out, hub_caches=[]))
    assert found.where == "CapHuman file"
    assert_same_tower(read_clip_vision(found), vision_part(clip_model_state))
    assert not any(k.startswith("clip_vision.text_model") for k in load_file(out))


# the status a user reads, and downloads of the free files -----------------------------------------------------
def rows_by_name(rows):
    return {row["name"]: row for row in rows}


def test_status_of_an_empty_install_lists_every_file_with_source_and_licence(tmp_path):
    from caphuman_ext.model_files import model_status, status_markdown

    rows = rows_by_name(model_status([tmp_path], hub_caches=[]))
    assert set(rows) == {"caphuman", "clip_vision", "face_parsing", "facenet", "generic_model",
                         "landmark_embedding", "head_template", "FLAME_texture", "deca_model"}
    assert all(row["status"] == "missing" and row["path"] is None for row in rows.values())
    for name in ("clip_vision", "face_parsing", "facenet"):
        model = weights.FREE_FILES[name]
        assert rows[name]["downloadable"] and rows[name]["url"] == model.url
        assert rows[name]["sha256"] == model.sha256 and rows[name]["size"] == model.size
    for name in ("generic_model", "FLAME_texture"):
        assert not rows[name]["downloadable"] and "flame.is.tue.mpg.de" in rows[name]["licence"]
        assert "register" in rows[name]["licence"] and FLAME_SITE in rows[name]["note"]
    assert "DECA" in rows["deca_model"]["licence"] and not rows["caphuman"]["downloadable"]
    assert status_markdown(list(rows.values())).count("**missing**") == 9


def test_status_reports_found_verified_and_differing_files_cheaply(tmp_path, monkeypatch, clip_model_state):
    from caphuman_ext.model_files import model_status

    parsing = tmp_path / "79999_iter.pth"
    parsing.write_bytes(b"published bytes")
    (tmp_path / "20180402-114759-vggface2.pt").write_bytes(b"a re-saved copy")
    (tmp_path / "deca").mkdir()
    (tmp_path / "deca" / "deca_model.tar").write_bytes(b"tar")
    torch.save({"state_dict": capface_state()}, tmp_path / "caphuman.ckpt")
    cache = tmp_path / "hub"
    snapshot = hub_cache(cache, clip_model_state)
    monkeypatch.setattr(weights, "FACE_PARSING", published_as(weights.FACE_PARSING, parsing))
    reads = []
    real = weights.sha256
    monkeypatch.setattr(weights, "sha256", lambda p: reads.append(p) or real(p))

    quick = rows_by_name(model_status([tmp_path], hub_caches=[cache]))
    assert not reads  # nothing hashed without verify=True
    assert quick["face_parsing"]["status"] == "found" and quick["face_parsing"]["verified"] is None
    assert quick["caphuman"]["path"] == str(tmp_path / "caphuman.ckpt")
    assert quick["clip_vision"]["where"] == "Hugging Face cache" and quick["clip_vision"]["path"] == str(snapshot)
    assert quick["deca_model"]["status"] == "found" and quick["generic_model"]["status"] == "missing"

    full = rows_by_name(model_status([tmp_path], hub_caches=[cache], verify=True))
    assert full["face_parsing"]["verified"] is True and full["face_parsing"]["status"] == "found"
    assert full["facenet"]["verified"] is False and full["facenet"]["status"] == "differs"
    assert weights.FACENET_VGGFACE2.sha256 in full["facenet"]["note"]
    assert full["clip_vision"]["verified"] is False  # a tiny file is not the published CLIP
    hashed = len(reads)
    model_status([tmp_path], hub_caches=[cache], verify=True)
    assert len(reads) == hashed  # cached by path, size and mtime


def test_download_of_free_files_only(tmp_path, monkeypatch):
    from caphuman_ext.model_files import download

    served = tmp_path / "served.pth"
    served.write_bytes(b"parsing weights")
    monkeypatch.setitem(weights.FREE_FILES, "face_parsing", published_as(weights.FACE_PARSING, served))
    path = download("face_parsing", [tmp_path / "models"], progress=lambda done, total: None)
    assert path.read_bytes() == b"parsing weights" and path.name == "79999_iter.pth"
    assert download("face_parsing", [tmp_path / "models"]) == path  # already there and verified
    with pytest.raises(ValueError, match="flame.is.tue.mpg.de"):
        download("generic_model", [tmp_path / "models"])


def test_panel_reports_a_failed_download_and_refreshes(tmp_path):
    from caphuman_ext.model_files import model_status
    from caphuman_ext.model_files_panel import download_and_report

    def failing(name):
        raise weights.ModelFileMissingError("offline")

    message, table = download_and_report("facenet", lambda verify, model: model_status([tmp_path], hub_caches=[]),
                                         failing)
    assert "20180402-114759-vggface2.pt: offline" in message and "**missing**" in table


# one hash and one download per file at a time ------------------------------------------------------------------
def _wait_until(condition, what: str) -> None:
    import threading

    pause = threading.Event()
    for _ in range(2000):  # at most ~20 s; returns as soon as the condition holds
        if condition():
            return
        pause.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_concurrent_verifies_hash_a_file_once(tmp_path, monkeypatch):
    """8 concurrent `?verify=1` on one file: one read; the others wait for it and use its hash."""
    import threading

    path = tmp_path / "79999_iter.pth"
    path.write_bytes(b"x" * 1000)
    model = published_as(weights.FACE_PARSING, path)
    real, reads, callers = weights.sha256, [], 8
    start = threading.Barrier(callers)

    def slow_sha256(p):
        reads.append(p)
        flights = weights.HASHES._flights if hasattr(weights.HASHES, "_flights") else None
        # hold the read until every other caller is either reading too (no lock) or waiting for this one
        _wait_until(lambda: len(reads) == callers or (flights is not None and flights.waiting(str(path.resolve()))
                                                       == callers - 1), "the other callers")
        return real(p)

    monkeypatch.setattr(weights, "sha256", slow_sha256)
    results = []

    def verify():
        start.wait()
        results.append(weights.verify(path, model).verified)

    threads = [threading.Thread(target=verify) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [True] * callers and len(reads) == 1


def _failing_urlopen(calls, entered, release):
    def urlopen(url, timeout=None):
        calls.append(url)
        entered.set()
        release.wait(timeout=30)
        raise OSError("network unreachable")
    return urlopen


def test_concurrent_downloads_fail_once_and_the_failure_is_remembered(tmp_path, monkeypatch):
    import threading

    calls, entered, release = [], threading.Event(), threading.Event()
    monkeypatch.setattr(weights.urllib.request, "urlopen", _failing_urlopen(calls, entered, release))
    errors = []

    def attempt():
        try:
            weights.download(weights.FACENET_VGGFACE2, tmp_path / "models", progress=lambda done, total: None)
        except weights.ModelFileMissingError as error:
            errors.append(str(error))

    first = threading.Thread(target=attempt)
    first.start()
    assert entered.wait(timeout=30)
    others = [threading.Thread(target=attempt) for _ in range(3)]
    for thread in others:
        thread.start()
    release.set()
    for thread in [first, *others]:
        thread.join(timeout=60)
    attempt()  # a later call within the memory: not tried again either
    assert len(calls) == 1 and len(errors) == 5 and all("network unreachable" in e for e in errors)
    assert not list((tmp_path / "models").iterdir())  # no .part left


def test_concurrent_downloads_share_one_transfer(tmp_path, monkeypatch):
    import threading

    served = tmp_path / "served.pth"
    served.write_bytes(b"parsing weights")
    model = published_as(weights.FACE_PARSING, served)
    real, calls, entered, release = weights.urllib.request.urlopen, [], threading.Event(), threading.Event()

    def slow_urlopen(url, timeout=None):
        calls.append(url)
        entered.set()
        release.wait(timeout=30)
        return real(url, timeout=timeout)

    monkeypatch.setattr(weights.urllib.request, "urlopen", slow_urlopen)
    paths = []
    fetch = lambda: paths.append(weights.download(model, tmp_path / "models", progress=lambda d, t: None))  # noqa: E731
    first = threading.Thread(target=fetch)
    first.start()
    assert entered.wait(timeout=30)
    others = [threading.Thread(target=fetch) for _ in range(3)]
    for thread in others:
        thread.start()
    release.set()
    for thread in [first, *others]:
        thread.join(timeout=60)
    assert len(calls) == 1 and paths == [tmp_path / "models" / "79999_iter.pth"] * 4
    assert paths[0].read_bytes() == b"parsing weights"


def test_a_failed_download_of_a_differing_file_does_not_call_it_missing(tmp_path, monkeypatch):
    from caphuman_ext.model_files import download

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "20180402-114759-vggface2.pt").write_bytes(b"a re-saved copy")
    calls, entered, release = [], __import__("threading").Event(), __import__("threading").Event()
    release.set()
    monkeypatch.setattr(weights.urllib.request, "urlopen", _failing_urlopen(calls, entered, release))
    with pytest.raises(weights.ModelFileMissingError) as error:
        download("facenet", [folder], progress=lambda done, total: None)
    assert "is missing" not in str(error.value) and "not the published file" in str(error.value)
    assert (folder / "20180402-114759-vggface2.pt").read_bytes() == b"a re-saved copy"


# the panel: what it offers, which CapHuman file it describes, never raising --------------------------------------
def test_panel_offers_only_the_downloads_a_user_needs(tmp_path, monkeypatch, clip_model_state):
    from caphuman_ext.model_files import model_status
    from caphuman_ext.model_files_panel import panel_view

    torch.save({"state_dict": {**capface_state(), **{"control_cond_stage_model.transformer." + k: v for k, v in
                                                     vision_part(clip_model_state).items()}}},
               tmp_path / "caphuman.ckpt")  # the CLIP tower is inside the CapHuman file
    parsing = tmp_path / "79999_iter.pth"
    parsing.write_bytes(b"published bytes")
    monkeypatch.setattr(weights, "FACE_PARSING", published_as(weights.FACE_PARSING, parsing))
    (tmp_path / "20180402-114759-vggface2.pt").write_bytes(b"a re-saved copy")  # present with another hash
    table, offered, message = panel_view(lambda verify, model: model_status([tmp_path], hub_caches=[],
                                                                            verify=verify, model=model), True)
    assert message == "" and "clip_vision" not in offered and "face_parsing" not in offered
    assert offered["facenet"].startswith("Replace 20180402-114759-vggface2.pt") and "missing" not in offered["facenet"]
    assert "CapHuman file: `" in table


def test_panel_describes_the_file_the_unit_uses(tmp_path, clip_model_state):
    from caphuman_ext.model_files import model_status
    from caphuman_ext.unit.builder import UnitBuilder

    torch.save({"state_dict": capface_state()}, tmp_path / "caphuman.ckpt")  # alphabetically first, no CLIP
    torch.save({"state_dict": {**capface_state(), **{"clip_vision." + k: v for k, v in
                                                     vision_part(clip_model_state).items()}}},
               tmp_path / "caphuman_b.ckpt")
    for model in ("", "caphuman_b.ckpt"):
        rows = rows_by_name(model_status([tmp_path], hub_caches=[], model=model))
        used = UnitBuilder([tmp_path]).model_path(model)
        assert rows["caphuman"]["path"] == str(used) and "caphuman" in rows["caphuman"]["note"]  # the other file
        assert (rows["clip_vision"]["where"] == "CapHuman file") == (used.name == "caphuman_b.ckpt")
    rows = rows_by_name(model_status([tmp_path], hub_caches=[], model="gone.ckpt"))
    assert rows["caphuman"]["status"] == "missing" and "gone.ckpt" in rows["caphuman"]["note"]


def test_panel_builds_over_a_truncated_caphuman_file(tmp_path):
    """What Script.ui shows: the table with the file marked unreadable, never an exception (A1111 would drop the
    whole CapHuman panel)."""
    from caphuman_ext.model_files import READS, model_status
    from caphuman_ext.model_files_panel import panel_view

    READS.clear()
    torch.save({"state_dict": capface_state()}, tmp_path / "caphuman.ckpt")
    (tmp_path / "caphuman.ckpt").write_bytes((tmp_path / "caphuman.ckpt").read_bytes()[:104])
    table, offered, message = panel_view(lambda verify, model: model_status([tmp_path], hub_caches=[],
                                                                            verify=verify, model=model))
    assert message == "" and "**unreadable**" in table and "clip_vision" in offered

    def failing(verify, model):
        raise PermissionError("models folder")

    table, offered, message = panel_view(failing)
    assert table == "" and offered == {} and "PermissionError: models folder" in message
