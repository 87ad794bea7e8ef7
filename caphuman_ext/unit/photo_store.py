"""Reference photos kept on disk under a short content hash, so pasting an image's parameters can bring its photos
back: the hash is written in the infotext ("photos 1a2b3c4d5e6f"), `lookup` returns the photos or None.

The store is bounded in disk use (allocated blocks, not file sizes: a one-pixel PNG takes a whole block) and in entry
count: saving evicts the entries used longest ago. A save writes into a staging folder first; staging folders left by
a killed save (their process gone, or older than an hour) are removed by the next save. Entries are checked on lookup
(decoded with the photo limits, hash recomputed), so a damaged or foreign folder entry reads as missing, never as
wrong photos.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from PIL import Image

from preprocessors.identity.errors import ImageError
from preprocessors.identity.image_io import decode_photo, load_image
from preprocessors.photo_key import photo_key

HASH_LENGTH = 12
_HASH = re.compile(rf"[0-9a-f]{{{HASH_LENGTH}}}")
DEFAULT_MAX_BYTES = 512 * 2**20
DEFAULT_MAX_ENTRIES = 4096
STAGING = ".staging-"
STALE_STAGING_SECONDS = 3600.0


def photos_hash(images: list[Image.Image]) -> str:
    """12 hex digits of SHA-1 over the photos' pixel keys, in order (the same photos give the same hash whether they
    came from the UI, the API or this store)."""
    digest = hashlib.sha1()
    for image in images:
        digest.update(photo_key(load_image(image)).encode())
    return digest.hexdigest()[:HASH_LENGTH]


def is_photos_hash(value: object) -> bool:
    return isinstance(value, str) and _HASH.fullmatch(value) is not None


def _disk_bytes(stat: os.stat_result) -> int:
    """What a file takes on disk: its allocated blocks (its size where the platform has no st_blocks)."""
    blocks = getattr(stat, "st_blocks", None)
    return stat.st_size if blocks is None else blocks * 512


def _entry_bytes(entry: Path) -> int:
    """Disk use of an entry: the folder itself and every file in it."""
    total = _disk_bytes(entry.stat())
    for item in entry.iterdir():
        stat = item.lstat()
        total += _disk_bytes(stat)
    return total


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its folder alone
    return True


def _stale_staging(path: Path, now: float) -> bool:
    """A staging folder no save is writing any more: its process is gone, or it is older than an hour."""
    owner = path.name[len(STAGING):].split("-", 1)[0]
    if owner.isdigit() and int(owner) != os.getpid() and not _process_alive(int(owner)):
        return True
    try:
        return now - path.stat().st_mtime > STALE_STAGING_SECONDS
    except OSError:
        return False


class PhotoStore:
    """`folder/<hash>/<n>.png` per saved photo set, at most `max_bytes` of disk and `max_entries` sets in all."""

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._swept = False  # stale staging folders are removed by the first save of a process, then on each new one

    def save(self, images: list[Image.Image]) -> str:
        """Store the photos (PNG, lossless) and return their hash; a set larger than the store is not kept."""
        images = [load_image(image) for image in images]
        digest = photos_hash(images)
        entry = self.folder / digest
        if entry.is_dir():
            os.utime(entry)
            if not self._swept:
                self._evict(keep=entry)
            return digest
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = self.folder / f"{STAGING}{os.getpid()}-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            for index, image in enumerate(images):
                image.save(staging / f"{index}.png", format="PNG", compress_level=1)  # fast; the bound holds size
            if _entry_bytes(staging) > self.max_bytes:
                return digest
            os.replace(staging, entry)
        except OSError:
            if not entry.is_dir():
                return digest
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._evict(keep=entry)
        return digest

    def lookup(self, digest: str) -> list[Image.Image] | None:
        """The photos saved under `digest`, or None (unknown, evicted, damaged)."""
        found = self._checked(digest)
        return None if found is None else found[1]

    def paths(self, digest: str) -> list[Path] | None:
        """The PNG files of the photos saved under `digest` (checked as by `lookup`), e.g. for a gradio File."""
        found = self._checked(digest)
        return None if found is None else found[0]

    def _checked(self, digest: str) -> tuple[list[Path], list[Image.Image]] | None:
        if not is_photos_hash(digest):
            return None
        entry = self.folder / digest
        try:
            files = sorted((f for f in entry.iterdir() if f.suffix == ".png" and f.stem.isdigit()),
                           key=lambda f: int(f.stem))
            images = [decode_photo(f) for f in files]
        except (OSError, ImageError):
            return None
        if not images or photos_hash(images) != digest:
            return None
        try:
            os.utime(entry)
        except OSError:
            pass
        return files, images

    def _evict(self, keep: Path) -> None:
        """Remove stale staging folders, then the entries used longest ago until both bounds hold."""
        self._swept = True
        entries, now = [], time.time()
        for entry in self.folder.iterdir():
            try:
                if entry.name.startswith(STAGING) and entry.is_dir():
                    if _stale_staging(entry, now):
                        shutil.rmtree(entry, ignore_errors=True)
                elif entry.is_dir() and is_photos_hash(entry.name):
                    entries.append((entry.stat().st_mtime, entry, _entry_bytes(entry)))
            except OSError:
                continue
        total, count = sum(size for _, _, size in entries), len(entries)
        for _, entry, size in sorted(entries, key=lambda item: item[0]):
            if total <= self.max_bytes and count <= self.max_entries:
                break
            if entry != keep:
                shutil.rmtree(entry, ignore_errors=True)
                total, count = total - size, count - 1
