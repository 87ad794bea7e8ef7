"""Every file CapHuman needs, as a user can read it before generating: found where, verified or not, or missing with
its source and licence; and the download of the free ones. No webui import: the webui passes its folders.

    rows = model_status(model_folders(webui_models), caphuman_file=..., annotator_dirs=controlnet_annotator_dirs(...))
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from preprocessors.head.assets import FLAME_SITE, HEAD_FILES
from preprocessors.identity import weights
from preprocessors.identity.clip_files import CAPHUMAN_PREFIXES, ClipSearch, _keys, find_clip_vision
from preprocessors.identity.single_flight import SingleFlight

from .unit.models import list_capface_models

LOG = logging.getLogger("caphuman")

CAPHUMAN_SOURCE = "https://github.com/VamosC/CapHuman (caphuman.ckpt, linked from its README)"
CAPHUMAN_LICENCE = "CapHuman's (see its repository)"
HEAD_SUBFOLDERS = ("", "deca", "data", "flame")  # as HeadAssets.find looks
FLAME_FILES = ("generic_model.pkl", "FLAME_texture.npz")
FLAME_LICENCE = f"FLAME licence (non-commercial): register at {FLAME_SITE} and accept it; never downloaded for you"
DECA_LICENCE = "DECA licence (non-commercial; github.com/yfeng95/DECA), uses FLAME"
CLIP_ROLE = "CLIP ViT-L/14 vision tower (identity tokens)"
HEAD_ROLE = "head hint (DECA/FLAME)"


@dataclass
class FileStatus:
    """One row of the status. status: "found", "missing", "differs" (found, but not the published bytes) or
    "unreadable" (found, but it cannot be read: the note says why); verified: True / False / None (no published
    hash, or not hashed yet)."""

    name: str
    file: str
    role: str
    status: str
    path: str | None
    where: str | None
    verified: bool | None
    url: str
    size: int | None
    sha256: str | None
    licence: str
    downloadable: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _free_file_status(model: weights.ModelFile, path: Path | None, where: str | None, role: str,
                      verify: bool) -> FileStatus:
    row = FileStatus(model.name, model.filename, role, "missing", None, None, None, model.url, model.size,
                     model.sha256, model.licence, True,
                     "" if path else f"downloaded on first use when automatic downloads are on, or put it in the "
                                     f"first model folder ({model.size:,} bytes)")
    if path is None:
        return row
    row.path, row.where, row.status = str(path), where, "found"
    if where == "CapHuman file":
        row.note = "stored inside the CapHuman file"
        return row
    try:
        check = weights.verify(path, model, compute=verify)
    except OSError as error:
        row.status, row.note = "unreadable", f"cannot be read ({_reason(error, path)})"
        return row
    row.verified = check.verified
    if check.verified is False:
        sizes = " or ".join(f"{p.size:,}" for p in model.published)
        row.status, row.note = "differs", (
            f"not the published {model.filename}: its SHA-256 is {check.sha256}, expected {model.sha256} ({sizes} "
            f"bytes). It may be damaged or another model; if loading fails, replace it with {model.url}")
    elif check.verified is None:
        row.note = "not hashed yet (verify to check it)"
    return row


def _reason(error: BaseException, path: Path | None = None) -> str:
    """An error as a short line, the file named by its name only (the row carries where it is)."""
    text = f"{type(error).__name__}: {error}"
    if path is not None:
        text = text.replace(str(Path(path).resolve()), Path(path).name).replace(str(path), Path(path).name)
    return text[:300]


@dataclass(frozen=True)
class CapHumanRead:
    """What reading a CapHuman file's keys found: where its CLIP tower is (None: it has none), or why it failed."""

    clip_prefix: str | None
    error: str | None = None


class _ReadCache:
    """Results of reading files, failures included, keyed by (resolved path, size, mtime): a file that cannot be
    read is read once per change, not on every status call; concurrent calls for one file read it once."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._flights = SingleFlight()
        self._entries: OrderedDict[tuple, CapHumanRead] = OrderedDict()

    def _known(self, key: tuple) -> CapHumanRead | None:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
            return self._entries.get(key)

    def get(self, path: Path, read: Callable[[Path], CapHumanRead]) -> CapHumanRead:
        resolved = Path(path).resolve()
        stat = resolved.stat()
        key = (str(resolved), stat.st_size, stat.st_mtime_ns)

        def work() -> CapHumanRead:
            result = read(resolved)
            with self._lock:
                self._entries[key] = result
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
            return result

        return self._flights.run(key[0], work, reuse=lambda: self._known(key))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


READS = _ReadCache()


def _read_caphuman(path: Path) -> CapHumanRead:
    try:
        keys = _keys(path)
    except Exception as error:  # noqa: BLE001 - any failure of a hostile or damaged file is reported, not raised
        LOG.warning("CapHuman: %s cannot be read: %s", path, error)
        return CapHumanRead(None, _reason(error, path))
    if not keys:
        return CapHumanRead(None, "holds no tensors: not a CapHuman checkpoint")
    return CapHumanRead(next((p for p in CAPHUMAN_PREFIXES if any(k.startswith(p) for k in keys)), None))


def read_caphuman(path: Path) -> CapHumanRead:
    """`CapHumanRead` of a CapHuman file, from the cache when the file has not changed; never raises for the file's
    content (OSError when it cannot even be found)."""
    return READS.get(path, _read_caphuman)


def _head_file(name: str, folders: Iterable[Path]) -> Path | None:
    for folder in folders:
        for sub in HEAD_SUBFOLDERS:
            candidate = Path(folder) / sub / name
            if candidate.is_file():
                return candidate
    return None


def _caphuman_row(chosen: Path | None, checkpoints: dict[str, Path], folders: list[Path], model: str
                  ) -> tuple[FileStatus, CapHumanRead | None]:
    others = [n for n in checkpoints if not chosen or n != chosen.name]
    row = FileStatus("caphuman", chosen.name if chosen else (model or "caphuman.ckpt"),
                     "CapHuman (CapFace + identity projections)", "missing", None, None, None, CAPHUMAN_SOURCE, None,
                     None, CAPHUMAN_LICENCE, False)
    if chosen is None:
        row.note = (f"{model!r} not found; available: {list(checkpoints)}" if model and checkpoints else
                    f"put it in {folders[0] if folders else 'models/CapHuman'}")
        return row, None
    row.path, row.where, row.status = str(chosen), "CapHuman model folder", "found"
    row.note = f"also found: {', '.join(others)}" if others else ""
    try:
        read = read_caphuman(chosen)
    except OSError as error:
        read = CapHumanRead(None, _reason(error, chosen))
    if read.error is not None:
        row.status = "unreadable"
        row.note = "; ".join(filter(None, [f"cannot be read ({read.error}): replace it ({CAPHUMAN_SOURCE})",
                                           row.note]))
    return row, read


def _safe_row(make: Callable[[], FileStatus], name: str, filename: str, role: str) -> FileStatus:
    """A row, or an "unreadable" row saying why it could not be made (the status never raises)."""
    try:
        return make()
    except Exception as error:  # noqa: BLE001 - a listing must answer whatever the disk holds
        LOG.warning("CapHuman: the status of %s failed: %s", filename, error)
        return FileStatus(name, filename, role, "unreadable", None, None, None, "", None, None, "", False,
                          f"its status could not be read ({_reason(error)})")


def model_status(folders: list[Path], caphuman_file: Path | None = None, annotator_dirs: Iterable[Path] = (),
                 hub_caches: list[Path] | None = None, verify: bool = False, model: str = "") -> list[dict[str, Any]]:
    """One dict per file (see `FileStatus`); never raises. The CapHuman row is `caphuman_file`, else the file a
    unit with `model` uses (its dropdown's name; "" = the unit's default, the first file found). `verify=True`
    hashes files not hashed before (a multi-GB file once: hashes are cached by path, size and mtime); otherwise
    only known hashes are reported. What a CapHuman file holds is read once per path, size and mtime, failures
    included (`read_caphuman`)."""
    folders = [Path(f) for f in folders]
    annotators = [Path(a) for a in annotator_dirs]
    rows: list[FileStatus] = []

    try:
        checkpoints = list_capface_models(folders)
    except OSError:
        checkpoints = {}
    if caphuman_file:
        chosen: Path | None = Path(caphuman_file)
    elif model:
        chosen = checkpoints.get(model)
    else:
        chosen = next(iter(checkpoints.values()), None)
    caphuman, read = _caphuman_row(chosen, checkpoints, folders, model)
    rows.append(caphuman)

    def clip_row() -> FileStatus:
        if read is not None and read.clip_prefix is not None:
            return _free_file_status(weights.CLIP_VISION, chosen, "CapHuman file", CLIP_ROLE, verify)
        clip = find_clip_vision(ClipSearch(None, folders, annotators, hub_caches))  # an unreadable file: elsewhere
        return _free_file_status(weights.CLIP_VISION, clip.path if clip else None, clip.where if clip else None,
                                 CLIP_ROLE, verify)

    rows.append(_safe_row(clip_row, "clip_vision", weights.CLIP_VISION.filename, CLIP_ROLE))
    for free, role in ((weights.FACE_PARSING, "face parsing (identity)"),
                       (weights.FACENET_VGGFACE2, "FaceNet (identity embedding)")):
        def free_row(free=free, role=role) -> FileStatus:
            path = weights.find(free, folders)
            return _free_file_status(free, path, "CapHuman model folder" if path else None, role, verify)
        rows.append(_safe_row(free_row, free.name, free.filename, role))

    for name, about in HEAD_FILES.items():
        def head_row(name=name, about=about) -> FileStatus:
            path = _head_file(name, folders)
            licence = FLAME_LICENCE if name in FLAME_FILES else DECA_LICENCE
            return FileStatus(name.split(".")[0], name, HEAD_ROLE, "found" if path else "missing",
                              str(path) if path else None, "CapHuman model folder" if path else None, None, about,
                              None, None, licence, False, "" if path else about)
        rows.append(_safe_row(head_row, name.split(".")[0], name, HEAD_ROLE))
    return [row.to_dict() for row in rows]


def needs_download(row: dict[str, Any]) -> bool:
    """Whether the panel offers to download a row's file: a free file that is missing or not the published one
    (never one stored inside the CapHuman file, or one already found)."""
    return bool(row.get("downloadable")) and row.get("status") in ("missing", "differs", "unreadable") \
        and row.get("where") != "CapHuman file"


def public_answer(value: Any, folders: list[Path]) -> Any:
    """`value` (a models answer) with every server path shown relative to the model folder that holds it
    (`<folder name>/<relative path>`), other absolute paths as their file name, the home folder as `~`."""
    roots = sorted(((str(Path(f)), Path(f).name or str(f)) for f in folders), key=lambda r: -len(r[0]))
    roots += [(str(Path(f).resolve()), Path(f).name) for f in folders if str(Path(f).resolve()) != str(Path(f))]
    home = str(Path.home())

    def text(item: str) -> str:
        for root, label in roots:
            item = item.replace(root, label)
        return item.replace(home, "~") if len(home) > 1 else item

    def walk(item: Any, key: str | None = None) -> Any:
        if isinstance(item, dict):
            return {k: walk(v, k) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        if isinstance(item, str):
            if key == "path" and Path(item).is_absolute():
                shown = text(item)
                return Path(shown).name if Path(shown).is_absolute() or shown.startswith("~") else shown
            return text(item)
        return item

    return walk(value)


def download(name: str, folders: list[Path], progress: weights.Progress | None = None) -> Path:
    """Download a free file (`face_parsing`, `facenet`, `clip_vision`) into the first folder, verified.

    FLAME and DECA files are never downloaded: their licences need the user's own registration.
    """
    if name not in weights.FREE_FILES:
        raise ValueError(f"{name!r} cannot be downloaded for you: only {sorted(weights.FREE_FILES)} can. FLAME "
                         f"needs your registration at {FLAME_SITE}; DECA's files come from github.com/yfeng95/DECA")
    if not folders:
        raise ValueError("no model folder to download into")
    model = weights.FREE_FILES[name]
    existing = weights.find(model, folders)
    if existing is not None and weights.verify(existing, model).verified:
        return existing
    return weights.download(model, Path(folders[0]), progress)


def status_markdown(rows: list[dict[str, Any]]) -> str:
    """The status as a Markdown table (for the panel)."""
    marks = {True: "verified", False: "**differs**", None: ""}
    lines = ["| file | for | status | where | licence |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        if row["status"] == "missing":
            state = f"**missing** — {row['note'] or row['url']}"
        elif row["status"] == "unreadable":
            state = f"**unreadable** — {row['note']}"
        else:
            state = " ".join(filter(None, [row["status"] if row["status"] != "differs" else "found",
                                           marks[row["verified"]]]))
        where = f"{row['where']}: `{row['path']}`" if row["path"] else ""
        lines.append(f"| `{row['file']}` | {row['role']} | {state} | {where} | {row['licence']} |")
    return "\n".join(lines)
