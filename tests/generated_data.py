"""Synthetic model files from ../shared/parity's generators, made once per test run.

By default each generator runs once per pytest session into the session's temporary folder (hermetic: nothing
outlives the run but pytest's own temporary folders). With `CAPHUMAN_TEST_CACHE=DIR` the output is kept in DIR under
a key made of the generator's bytes, the Python version and the versions of the packages that shape its output, so
later runs (and other checkouts) reuse it until any of those changes. Tests only read these folders.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

CACHE_VARIABLE = "CAPHUMAN_TEST_CACHE"
# What the generators import: another version may write other values.
KEY_PACKAGES = ("torch", "numpy", "scipy", "pillow", "scikit-image", "facexlib", "facenet-pytorch")


def run_shared_generator(parity_dir: Path, script: str, out: Path) -> Path:
    """Write synthetic model files in the real formats with one of ../shared/parity's generators."""
    subprocess.run([sys.executable, str(parity_dir / script), str(out)], check=True, capture_output=True)
    return out


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def content_key(script: Path) -> str:
    """`<script stem>-<hash>`: the hash of the script and of everything else that decides what it writes."""
    digest = hashlib.sha256(script.read_bytes())
    digest.update(sys.version.encode())
    for package in KEY_PACKAGES:
        digest.update(f"\0{package}={_version(package)}".encode())
    return f"{script.stem}-{digest.hexdigest()[:16]}"


def generated(parity_dir: Path, script: str, session_folder) -> Path:
    """The generator's output folder: in `$CAPHUMAN_TEST_CACHE` when set, else a new folder from
    `session_folder()` (the session's temporary folder)."""
    root = os.environ.get(CACHE_VARIABLE)
    if not root:
        return run_shared_generator(parity_dir, script, session_folder())
    target = Path(root) / content_key(parity_dir / script)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        run_shared_generator(parity_dir, script, staging)
        try:
            staging.rename(target)  # atomic: a reader sees a whole folder or none
        except OSError:
            if not target.is_dir():  # not another run finishing first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def link_or_copy(source: Path, target: Path) -> Path:
    """`target` as a hard link to `source` (no bytes written), or a copy where no link can be made (another file
    system). For the generated model files, which tests only read."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy(source, target)
    return target
