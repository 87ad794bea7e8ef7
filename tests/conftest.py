"""Shared pytest fixtures: where the reference data given to the project lives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


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
