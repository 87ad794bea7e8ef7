"""The free model files (face parsing, FaceNet, CLIP ViT-L/14): one table of where each comes from, its size and its
SHA-256, and finding, verifying (hashes cached by path, size and mtime) and downloading them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import IdentityError
from .single_flight import SingleFlight

LOG = logging.getLogger("caphuman")
EXTENSION_MODELS = Path(__file__).resolve().parents[2] / "models"


class ModelFileMissingError(IdentityError):
    """A model file is neither on disk nor downloadable; the message says which file goes where."""


class ModelFileCorruptError(IdentityError):
    """A downloaded file is not the published one (size or SHA-256 differ); it was not kept."""


@dataclass(frozen=True)
class Published:
    """One published file: its bytes are known by size and SHA-256."""

    url: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelFile:
    """A free model file: the name it is stored under, where it is downloaded from, and the published files whose
    bytes it may have (the first is the one downloaded)."""

    name: str
    filename: str
    published: tuple[Published, ...]
    about: str
    licence: str

    @property
    def url(self) -> str:
        return self.published[0].url

    @property
    def size(self) -> int:
        return self.published[0].size

    @property
    def sha256(self) -> str:
        return self.published[0].sha256


CLIP_REVISION = "32bd64288804d66eefd0ccbe215aa642df71cc41"
_CLIP_BASE = f"https://huggingface.co/openai/clip-vit-large-patch14/resolve/{CLIP_REVISION}"

# Sizes and SHA-256 as published in independent manifests (see docs / the commit that added them):
# facexlib parsing_bisenet.pth is byte-identical to face-parsing.PyTorch's 79999_iter.pth; the CLIP hashes are
# those of openai/clip-vit-large-patch14 at CLIP_REVISION (the hub names its cache blobs by the same SHA-256).
FACE_PARSING = ModelFile(
    "face_parsing", "79999_iter.pth",
    (Published("https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth", 53_289_463,
               "468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567"),),
    "BiSeNet face parsing (face-parsing.PyTorch `79999_iter.pth`; facexlib publishes the same file as "
    "`parsing_bisenet.pth`)",
    "MIT (face-parsing.PyTorch, facexlib)",
)
FACENET_VGGFACE2 = ModelFile(
    "facenet", "20180402-114759-vggface2.pt",
    (Published("https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
               111_898_327, "281cebca8662831adb987a874bdcb36e73f5b1c6dc5ee5878f305e985625d99b"),),
    "FaceNet InceptionResnetV1 trained on VGGFace2 (facenet-pytorch release)",
    "MIT (facenet-pytorch, weights ported from davidsandberg/facenet)",
)
CLIP_VISION = ModelFile(
    "clip_vision", "clip-vit-large-patch14.safetensors",
    (Published(f"{_CLIP_BASE}/model.safetensors", 1_710_540_580,
               "a2bf730a0c7debf160f7a6b50b3aaf3703e7e88ac73de7a314903141db026dcb"),
     # the same weights as a pickle: sd-webui-controlnet saves it as annotator/.../clip_vision/clip_vitl.pth
     Published(f"{_CLIP_BASE}/pytorch_model.bin", 1_710_671_599,
               "f1a17cdbe0f36fec524f5cafb1c261ea3bbbc13e346e0f74fc9eb0460dedd0d3")),
    "CLIP ViT-L/14 (openai/clip-vit-large-patch14; only its vision tower is loaded)",
    "MIT (OpenAI CLIP)",
)
FREE_FILES = {model.name: model for model in (FACE_PARSING, FACENET_VGGFACE2, CLIP_VISION)}


# hashes ----------------------------------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """SHA-256 of files keyed by (resolved path, size, mtime): a multi-GB file is hashed once, not on every call.

    Kept in memory and, when `path` is set and writable, in a small JSON file across restarts.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._flights = SingleFlight()  # concurrent requests for one file: one read, the others wait for it
        self._entries: dict[str, tuple[int, int, str]] | None = None

    def _load(self) -> dict[str, tuple[int, int, str]]:
        if self._entries is None:
            self._entries = {}
            if self.path is not None and self.path.is_file():
                try:
                    raw = json.loads(self.path.read_text())
                    self._entries = {k: (int(v[0]), int(v[1]), str(v[2])) for k, v in raw.items()}
                except (OSError, ValueError, TypeError, IndexError):
                    self._entries = {}
        return self._entries

    @staticmethod
    def _key(path: Path) -> tuple[str, int, int]:
        resolved = Path(path).resolve()
        stat = resolved.stat()
        return str(resolved), stat.st_size, stat.st_mtime_ns

    def cached(self, path: Path) -> str | None:
        """The known SHA-256 of `path` as it is now, without reading it; None if not hashed yet."""
        name, size, mtime = self._key(path)
        with self._lock:
            entry = self._load().get(name)
        return entry[2] if entry and entry[:2] == (size, mtime) else None

    def digest(self, path: Path) -> str:
        known = self.cached(path)
        if known is not None:
            return known
        name, size, mtime = self._key(path)
        return self._flights.run(name, lambda: self._compute(name, size, mtime), reuse=lambda: self.cached(path))

    def _compute(self, name: str, size: int, mtime: int) -> str:
        value = sha256(Path(name))
        with self._lock:
            self._load()[name] = (size, mtime, value)
            self._save()
        return value

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({k: list(v) for k, v in self._entries.items()}, indent=0))
        except OSError:
            pass  # a read-only folder: the cache stays in memory


HASHES = HashCache(EXTENSION_MODELS / "caphuman_hashes.json")


@dataclass(frozen=True)
class Verification:
    """verified: True (the bytes of a published file), False (other bytes), None (not hashed yet)."""

    path: Path
    verified: bool | None
    sha256: str | None
    message: str


def verify(path: Path, model: ModelFile, compute: bool = True) -> Verification:
    """Compare `path` with the published files of `model`. `compute=False` only uses hashes already known.

    Known by the SHA-256 of its bytes (a link's: its target's), never by its name: a Hugging Face cache blob is
    named after its hash, and so can be any file.
    """
    path = Path(path)
    expected = {p.sha256: p for p in model.published}
    digest = HASHES.digest(path) if compute else HASHES.cached(path)
    if digest is None:
        return Verification(path, None, None, f"{path}: not checked yet")
    if digest in expected:
        return Verification(path, True, digest, f"{path}: verified (SHA-256 of {expected[digest].url})")
    sizes = " or ".join(f"{p.size:,}" for p in model.published)
    return Verification(path, False, digest, (
        f"{path} is not the published {model.filename}: its SHA-256 is {digest} ({path.stat().st_size:,} bytes), "
        f"expected {model.sha256} ({sizes} bytes). It may be damaged or another model; if loading fails, replace "
        f"it with {model.url}"))


# finding and downloading -----------------------------------------------------------------------------------------
def find(model: ModelFile, folders: Iterable[Path]) -> Path | None:
    for folder in folders:
        path = Path(folder) / model.filename
        if path.is_file():
            return path
    return None


Progress = Callable[[int, int], None]


def console_progress(filename: str) -> Progress:
    """A progress callback printing every 10% (the webui's console is where a user watches downloads)."""
    shown = [-1]

    def report(done: int, total: int) -> None:
        step = done * 10 // total if total else -1
        if step != shown[0]:
            shown[0] = step
            print(f"CapHuman: downloading {filename}: {done / 1e6:,.0f} of {total / 1e6:,.0f} MB", flush=True)

    return report


DOWNLOAD_FAILURE_SECONDS = 30.0
_DOWNLOADS = SingleFlight(remember_failures=DOWNLOAD_FAILURE_SECONDS)


def download(model: ModelFile, folder: Path, progress: Progress | None = None, url: str | None = None) -> Path:
    """Download `model` into `folder` atomically; it is kept only if its size and SHA-256 are the published ones.

    One download per target file at a time: concurrent callers wait and get the file it downloaded; a failure is
    raised again to every caller for `DOWNLOAD_FAILURE_SECONDS` instead of being retried on every call."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / model.filename

    def downloaded() -> Path | None:
        return target if target.is_file() and HASHES.cached(target) == model.sha256 else None

    return _DOWNLOADS.run(str(target.resolve()), lambda: _download(model, folder, target, progress, url),
                          reuse=downloaded)


def _download(model: ModelFile, folder: Path, target: Path, progress: Progress | None, url: str | None) -> Path:
    source = url or model.url
    progress = progress or console_progress(model.filename)
    digest = hashlib.sha256()
    done = 0
    part_name = None
    try:
        with urllib.request.urlopen(source, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or model.size
            with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".part") as part:
                part_name = part.name
                while block := response.read(1 << 20):
                    part.write(block)
                    digest.update(block)
                    done += len(block)
                    if done > model.size * 2:
                        raise OSError(f"more than {model.size:,} bytes: not the published file")
                    progress(done, total)
    except OSError as error:
        if part_name:
            os.unlink(part_name)
        state = (f"on disk at {target} is not the published file (kept as it is)" if target.is_file()
                 else "is missing")
        raise ModelFileMissingError(
            f"{model.filename} {state} and could not be downloaded from {source} ({error}). "
            f"Download it yourself and put it in {folder}: {model.about}.") from error
    if (done, digest.hexdigest()) != (model.size, model.sha256):
        os.unlink(part_name)
        raise ModelFileCorruptError(
            f"the download of {model.filename} from {source} is not the published file ({done:,} bytes, SHA-256 "
            f"{digest.hexdigest()}; expected {model.size:,} bytes, {model.sha256}); it was not kept. Try again "
            f"later, or download it yourself into {folder}")
    shutil.move(part_name, target)
    HASHES.digest(target)  # recorded: later checks need not read it again
    return target


def missing_message(model: ModelFile, folders: list[Path]) -> str:
    places = " or ".join(str(f) for f in folders) or str(EXTENSION_MODELS)
    return (f"{model.filename} not found: put it in {places} ({model.about}; download: {model.url}; "
            f"{model.size:,} bytes, SHA-256 {model.sha256}), or turn on automatic downloads")


def ensure(model: ModelFile, folders: list[Path], allow_download: bool = True,
           progress: Progress | None = None) -> Path:
    """The local path of `model`, downloading it into the first folder if allowed.

    A file found with other bytes than the published ones is used (a re-saved copy loads the same), with a warning
    naming both hashes; it is never replaced behind the user's back.
    """
    path = find(model, folders)
    if path is None:
        if not allow_download or not folders:
            raise ModelFileMissingError(missing_message(model, [Path(f) for f in folders]))
        return download(model, Path(folders[0]), progress)
    check = verify(path, model)
    if check.verified is False:
        LOG.warning("CapHuman: %s", check.message)
    return path
