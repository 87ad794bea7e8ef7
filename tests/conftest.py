"""Shared pytest fixtures: where the reference data given to the project lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """`../shared` beside the checkout (CI puts it there), or `$CAPHUMAN_SHARED_DIR`."""
    return Path(os.environ.get("CAPHUMAN_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    path = shared_dir() / "parity"
    if not path.is_dir():
        pytest.skip(f"reference data not found at {path}")
    return path
