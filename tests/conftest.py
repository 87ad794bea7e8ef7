"""Shared pytest fixtures and helpers: where the reference data given to the project lives, the torch thread count,
and tolerances for comparing with data computed on another machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def run_shared_generator(parity_dir: Path, script: str, out: Path) -> Path:
    """Write synthetic model files in the real formats with one of ../shared/parity's generators."""
    subprocess.run([sys.executable, str(parity_dir / script), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    path = shared_dir() / "parity"
    if not path.is_dir():
        pytest.skip(f"reference data not found at {path}")
    return path


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
