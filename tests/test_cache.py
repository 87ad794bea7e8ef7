"""ByteLRU: bounded by bytes and entries, least recently used first out; the caches of both stages use it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from preprocessors.cache import ByteLRU, nbytes
from preprocessors.head.assets import HeadAssets
from preprocessors.head.pipeline import HeadPipeline


def tensor(n_bytes: int) -> torch.Tensor:
    return torch.zeros(n_bytes // 4, dtype=torch.float32)


def test_nbytes_counts_tensors_arrays_images_once():
    @dataclass
    class Holder:
        a: torch.Tensor
        b: dict
        c: object

    shared = torch.zeros(10, dtype=torch.float64)  # 80 bytes
    value = Holder(shared, {"x": np.zeros((2, 3), np.uint8), "y": [shared, Image.new("RGB", (4, 5))]}, "text")
    assert nbytes(value) == 80 + 6 + 4 * 5 * 3


def test_evicts_least_recently_used_by_bytes():
    cache = ByteLRU(max_bytes=1000, max_entries=100)
    cache.put("a", tensor(400))
    cache.put("b", tensor(400))
    assert cache.get("a") is not None  # "b" is now the least recently used
    cache.put("c", tensor(400))
    assert cache.keys() == ["a", "c"] and cache.total_bytes == 800


def test_evicts_by_entry_count():
    cache = ByteLRU(max_bytes=10**9, max_entries=2)
    for key in "abc":
        cache.put(key, tensor(4))
    assert cache.keys() == ["b", "c"] and len(cache) == 2


def test_oversize_value_is_returned_but_not_kept():
    cache = ByteLRU(max_bytes=1000)
    cache.put("small", tensor(100))
    big = tensor(2000)
    assert cache.put("big", big) is big
    assert "big" not in cache and cache.keys() == ["small"] and cache.total_bytes == 100


def test_replacing_a_key_counts_its_bytes_once():
    cache = ByteLRU(max_bytes=1000)
    cache.put("a", tensor(400))
    cache.put("a", tensor(800))
    assert cache.total_bytes == 800 and len(cache) == 1
    assert cache.pop("a") is not None and cache.total_bytes == 0


def test_bad_bounds_refused():
    with pytest.raises(ValueError):
        ByteLRU(max_bytes=-1)


@pytest.fixture(scope="module")
def head_inputs(deca_assets):
    return Image.open(deca_assets / "identity.png"), np.loadtxt(deca_assets / "identity.txt")


def test_hint_cache_is_keyed_by_content_and_bounded_by_bytes(deca_assets, head_inputs):
    photo, landmarks = head_inputs
    pipeline = HeadPipeline(HeadAssets.find([deca_assets]), deca_size=256, hint_cache_bytes=64 * 64 * 40 * 3)
    small = pipeline.render(photo, None, width=64, height=64, identity_landmarks=landmarks)
    # normal, albedo, shading (3 channels each) and alpha in float32, and 68 float64 landmarks
    assert nbytes(small) == 64 * 64 * 40 + 68 * 2 * 8
    assert pipeline.render(photo.copy(), None, width=64, height=64, identity_landmarks=landmarks) is small
    large = pipeline.render(photo, None, width=128, height=128, identity_landmarks=landmarks)  # 4× the budget
    assert large.hint.shape == (1, 9, 128, 128) and len(pipeline.hints) == 1
    assert pipeline.hints.total_bytes <= pipeline.hints.max_bytes
    for size in (48, 56, 60):  # evicts the oldest once the bytes run out
        pipeline.render(photo, None, width=size, height=size, identity_landmarks=landmarks)
    assert pipeline.hints.total_bytes <= pipeline.hints.max_bytes
    assert pipeline.render(photo, None, width=64, height=64, identity_landmarks=landmarks) is not small


def test_identity_cache_is_bounded_by_bytes(synthetic):
    from preprocessors import identity as ident
    from tests.inputs import tiny_clip_state

    photo = ident.load_image(synthetic / "identity.png")
    paths = ident.IdentityModelPaths(clip_vision=tiny_clip_state(), folders=[synthetic], allow_download=False)
    roomy = ident.IdentityEncoder(paths, cache_bytes=8 << 20)
    first = roomy.encode(photo)
    assert roomy.encode(photo.copy()) is first and 0 < roomy.cache.total_bytes == nbytes(first)
    tight = ident.IdentityEncoder(paths, cache_bytes=nbytes(first) - 1)  # one identity is already too big
    tight.encode(photo)
    assert len(tight.cache) == 0 and tight.encode(photo) is not first
