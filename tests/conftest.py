"""Shared pytest fixtures and helpers: where the reference data given to the project lives, the synthetic model files
made from it (once per run), the torch thread count, and tolerances for comparing with data computed on another
machine.

Fixtures used by more than one test module live here, never in a test module: a fixture imported into a module is
a separate fixture of that module, so a session fixture imported into ten modules runs ten times."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.generated_data import generated

REPO_ROOT = Path(__file__).resolve().parents[1]
FLOAT32_EPS = torch.finfo(torch.float32).eps
THREADS_VARIABLE = "CAPHUMAN_TEST_THREADS"


def pytest_configure(config) -> None:
    """`CAPHUMAN_TEST_THREADS=N` runs the suite with `torch.set_num_threads(N)`: other kernels, other sums."""
    threads = os.environ.get(THREADS_VARIABLE)
    if threads:
        torch.set_num_threads(int(threads))


def pytest_report_header(config) -> str:
    return f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"


def shared_dir() -> Path:
    """`../shared` beside the checkout (CI puts it there), or `$CAPHUMAN_SHARED_DIR`."""
    return Path(os.environ.get("CAPHUMAN_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    path = shared_dir() / "parity"
    if not path.is_dir():
        pytest.skip(f"reference data not found at {path}")
    return path


# --- synthetic model files (on disk: once per run) and what is read from them (in memory: once per module) ------

@pytest.fixture(scope="session")
def deca_assets(parity_dir, tmp_path_factory) -> Path:
    """Synthetic DECA/FLAME assets in the real formats (~780 MB), from make_synthetic_deca.py."""
    return generated(parity_dir, "make_synthetic_deca.py", lambda: tmp_path_factory.mktemp("deca_assets"))


@pytest.fixture(scope="session")
def synthetic(parity_dir, tmp_path_factory) -> Path:
    """Synthetic identity models (BiSeNet, FaceNet) and identity.png, from make_synthetic_identity.py."""
    return generated(parity_dir, "make_synthetic_identity.py", lambda: tmp_path_factory.mktemp("identity_models"))


@pytest.fixture(scope="module")
def head_reference(parity_dir) -> dict[str, torch.Tensor]:
    return load_file(parity_dir / "head_synthetic_A.safetensors")


@pytest.fixture(scope="module")
def photo(synthetic) -> Image.Image:
    from preprocessors import identity as ident

    return ident.load_image(synthetic / "identity.png")


@pytest.fixture(scope="module")
def encoder(synthetic):
    """An identity encoder on the synthetic models and the tiny CLIP tower; its caches start empty in each module."""
    from preprocessors import identity as ident
    from tests.inputs import tiny_clip_state

    paths = ident.IdentityModelPaths(clip_vision=tiny_clip_state(), folders=[synthetic], allow_download=False)
    return ident.IdentityEncoder(paths)


QUALITY_MODEL_SUFFIXES = (".pth", ".pt", ".pkl", ".npy", ".obj", ".npz", ".tar")


@pytest.fixture(scope="session")
def quality_models(tmp_path_factory, synthetic, deca_assets) -> Path:
    """Links (the texture file is large) to every model file the scorer reads, in one models folder."""
    folder = tmp_path_factory.mktemp("quality_models")
    for source in list(synthetic.iterdir()) + list(deca_assets.iterdir()):
        if source.suffix in QUALITY_MODEL_SUFFIXES:
            os.symlink(source, folder / source.name)
    return folder


@pytest.fixture(scope="module")
def scorer(quality_models):
    from caphuman_ext.quality import Scorer

    return Scorer([quality_models], allow_download=False)


@pytest.fixture(scope="module")
def webui(tmp_path_factory, synthetic, deca_assets):
    """The extension's script in a fake A1111 v1.10.1 (tests/webui_jobs.py), one per test module."""
    from tests.webui_jobs import webui_for_tests

    yield from webui_for_tests(tmp_path_factory, synthetic, deca_assets)


@pytest.fixture(scope="module")
def astronaut(synthetic) -> Image.Image:
    from preprocessors import identity as ident

    return ident.load_image(synthetic / "identity.png")  # skimage.data.astronaut(): a real portrait


def float32_noise(scale: float, roundings: int = 64) -> float:
    """How far two correct float32 computations of values of magnitude `scale` may drift apart when the kernels
    differ (another CPU, thread count or library version sums in another order): `roundings` float32 roundings.

    Measured: a whole tiny UNet or CapFace differs from its reference by 5-15 roundings of the output's magnitude.
    A semantic error (a wrong scale, a missing block, another epsilon) moves results by far more.
    """
    return roundings * FLOAT32_EPS * float(scale)


def assert_within_float32_noise(actual: torch.Tensor, expected: torch.Tensor, scale: float | None = None,
                                roundings: int = 64, what: str = "") -> None:
    """max |actual - expected| <= `roundings` float32 roundings of `scale` (default: the largest |expected|)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().item() if scale is None else scale
    error = (actual.double() - expected.double()).abs().max().item()
    bound = float32_noise(scale, roundings)
    assert error <= bound, f"{what}: max |Δ| {error:.3g} > {bound:.3g} ({roundings} float32 roundings of {scale:.3g})"


def assert_pixels_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, max_fraction: float,
                        outlier_atol: float) -> None:
    """Images (B, C, H, W): every pixel but `max_fraction` of them within `atol` (all channels), and those few
    within `outlier_atol`.

    For renders, where float32 noise in projected vertices (1-2 roundings) moves barycentrics on tiny triangles by
    far more than it moves anything else: on the synthetic head such noise puts ~20-270 of 65,536 pixels above
    1e-5 (at most 7e-4); a wrong normal, albedo or light moves thousands.
    """
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    per_pixel = (actual.double() - expected.double()).abs().amax(dim=1).flatten()
    beyond = int((per_pixel > atol).sum())
    allowed = int(max_fraction * per_pixel.numel())
    assert beyond <= allowed, f"{beyond} pixels differ by more than {atol:g} (allowed {allowed}); " \
                              f"max {per_pixel.max().item():.3g}"
    assert per_pixel.max().item() <= outlier_atol, f"a pixel differs by {per_pixel.max().item():.3g} > {outlier_atol:g}"


@pytest.fixture(autouse=True, scope="session")
def hash_cache_outside_the_checkout(tmp_path_factory):
    """Model-file hashes are cached in the extension's models/ folder; tests keep theirs in a temporary one."""
    from preprocessors.identity import weights

    weights.HASHES = weights.HashCache(tmp_path_factory.mktemp("hashes") / "caphuman_hashes.json")
