"""Synthetic DECA/FLAME assets in the real formats, from ../shared's generator (once per test session)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file


@pytest.fixture(scope="session")
def deca_assets(parity_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deca_assets")
    subprocess.run([sys.executable, str(parity_dir / "make_synthetic_deca.py"), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="session")
def head_reference(parity_dir):
    return load_file(parity_dir / "head_synthetic_A.safetensors")
