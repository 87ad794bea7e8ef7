"""Synthetic DECA/FLAME assets in the real formats, from ../shared's generator (once per test session)."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import run_shared_generator


@pytest.fixture(scope="session")
def deca_assets(parity_dir, tmp_path_factory) -> Path:
    return run_shared_generator(parity_dir, "make_synthetic_deca.py", tmp_path_factory.mktemp("deca_assets"))


@pytest.fixture(scope="session")
def head_reference(parity_dir):
    return load_file(parity_dir / "head_synthetic_A.safetensors")
