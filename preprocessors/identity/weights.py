"""Where the identity models live, and their first-use download (fixed URLs, progress, size check, SHA-256 recorded
on first download and verified afterwards)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import IdentityError


class ModelFileMissingError(IdentityError):
    """A model file is neither on disk nor downloadable; the message says which file goes where."""


class ModelFileCorruptError(IdentityError):
    """A model file differs from the one recorded at its first download."""


@dataclass(frozen=True)
class ModelFile:
    filename: str
    url: str
    about: str


FACE_PARSING = ModelFile(
    "79999_iter.pth",
    "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",
    "BiSeNet face parsing (face-parsing.PyTorch `79999_iter.pth`; facexlib publishes the same network as "
    "`parsing_bisenet.pth`)",
)
FACENET_VGGFACE2 = ModelFile(
    "20180402-114759-vggface2.pt",
    "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
    "FaceNet InceptionResnetV1 trained on VGGFace2 (facenet-pytorch release)",
)
CHECKSUMS = "caphuman_checksums.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(folder: Path) -> dict[str, str]:
    path = folder / CHECKSUMS
    return json.loads(path.read_text()) if path.is_file() else {}


def _record_checksum(folder: Path, filename: str, digest: str) -> None:
    data = _checksums(folder)
    data[filename] = digest
    (folder / CHECKSUMS).write_text(json.dumps(data, indent=1, sort_keys=True))


def verify(path: Path) -> None:
    """Raise if `path` no longer has the SHA-256 recorded when it was downloaded."""
    expected = _checksums(path.parent).get(path.name)
    if expected is not None and sha256(path) != expected:
        raise ModelFileCorruptError(f"{path} does not match the checksum recorded when it was downloaded "
                                    f"(partial or damaged file): delete it and it will be downloaded again")


def find(model: ModelFile, folders: Iterable[Path]) -> Path | None:
    for folder in folders:
        path = Path(folder) / model.filename
        if path.is_file():
            return path
    return None


Progress = Callable[[int, int], None]


def download(model: ModelFile, folder: Path, progress: Progress | None = None, url: str | None = None) -> Path:
    """Download `model` into `folder` (atomically), check its size against Content-Length, record its SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / model.filename
    source = url or model.url
    try:
        with urllib.request.urlopen(source, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0)
            with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".part") as part:
                done = 0
                while block := response.read(1 << 20):
                    part.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
    except OSError as error:
        raise ModelFileMissingError(
            f"{model.filename} is missing and could not be downloaded from {source} ({error}). "
            f"Download it yourself and put it in {folder}: {model.about}.") from error
    if total and done != total:
        os.unlink(part.name)
        raise ModelFileMissingError(f"download of {model.filename} stopped at {done} of {total} bytes: try again")
    shutil.move(part.name, target)
    _record_checksum(folder, model.filename, sha256(target))
    return target


def ensure(model: ModelFile, folders: list[Path], allow_download: bool = True,
           progress: Progress | None = None) -> Path:
    """The local path of `model`, downloading it into the first folder if allowed; verified against its record."""
    path = find(model, folders)
    if path is None:
        if not allow_download or not folders:
            places = " or ".join(str(f) for f in folders) or "the extension's models/ folder"
            raise ModelFileMissingError(f"{model.filename} not found: put it in {places} ({model.about}; "
                                        f"download: {model.url})")
        path = download(model, Path(folders[0]), progress)
    verify(path)
    return path
