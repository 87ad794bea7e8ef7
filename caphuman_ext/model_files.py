"""Every file CapHuman needs, as a user can read it before generating: found where, verified or not, or missing with
its source and licence; and the download of the free ones. No webui import: the webui passes its folders.

    rows = model_status(model_folders(webui_models), caphuman_file=..., annotator_dirs=controlnet_annotator_dirs(...))
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from preprocessors.head.assets import FLAME_SITE, HEAD_FILES
from preprocessors.identity import weights
from preprocessors.identity.clip_files import ClipSearch, find_clip_vision

from .unit.models import list_capface_models

CAPHUMAN_SOURCE = "https://github.com/VamosC/CapHuman (caphuman.ckpt, linked from its README)"
CAPHUMAN_LICENCE = "CapHuman's (see its repository)"
HEAD_SUBFOLDERS = ("", "deca", "data", "flame")  # as HeadAssets.find looks
FLAME_FILES = ("generic_model.pkl", "FLAME_texture.npz")
FLAME_LICENCE = f"FLAME licence (non-commercial): register at {FLAME_SITE} and accept it; never downloaded for you"
DECA_LICENCE = "DECA licence (non-commercial; github.com/yfeng95/DECA), uses FLAME"


@dataclass
class FileStatus:
    """One row of the status. status: "found", "missing" or "differs" (found, but not the published bytes);
    verified: True / False / None (no published hash, or not hashed yet)."""

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
    check = weights.verify(path, model, compute=verify)
    row.verified = check.verified
    if check.verified is False:
        row.status, row.note = "differs", check.message
    elif check.verified is None:
        row.note = "not hashed yet (verify to check it)"
    return row


def _head_file(name: str, folders: Iterable[Path]) -> Path | None:
    for folder in folders:
        for sub in HEAD_SUBFOLDERS:
            candidate = Path(folder) / sub / name
            if candidate.is_file():
                return candidate
    return None


def model_status(folders: list[Path], caphuman_file: Path | None = None, annotator_dirs: Iterable[Path] = (),
                 hub_caches: list[Path] | None = None, verify: bool = False) -> list[dict[str, Any]]:
    """One dict per file (see `FileStatus`). `verify=True` hashes files not hashed before (a multi-GB file once:
    hashes are cached by path, size and mtime); otherwise only known hashes are reported."""
    folders = [Path(f) for f in folders]
    rows: list[FileStatus] = []

    checkpoints = list_capface_models(folders)
    chosen = Path(caphuman_file) if caphuman_file else next(iter(checkpoints.values()), None)
    rows.append(FileStatus(
        "caphuman", chosen.name if chosen else "caphuman.ckpt", "CapHuman (CapFace + identity projections)",
        "found" if chosen and chosen.is_file() else "missing", str(chosen) if chosen else None,
        "CapHuman model folder" if chosen else None, None, CAPHUMAN_SOURCE, None, None, CAPHUMAN_LICENCE, False,
        f"also found: {', '.join(n for n in checkpoints if not chosen or n != chosen.name)}"
        if len(checkpoints) > 1 else ("" if chosen else f"put it in {folders[0] if folders else 'models/CapHuman'}")))

    clip = find_clip_vision(ClipSearch(chosen, folders, [Path(a) for a in annotator_dirs], hub_caches))
    rows.append(_free_file_status(weights.CLIP_VISION, clip.path if clip else None, clip.where if clip else None,
                                  "CLIP ViT-L/14 vision tower (identity tokens)", verify))
    for model, role in ((weights.FACE_PARSING, "face parsing (identity)"),
                        (weights.FACENET_VGGFACE2, "FaceNet (identity embedding)")):
        path = weights.find(model, folders)
        rows.append(_free_file_status(model, path, "CapHuman model folder" if path else None, role, verify))

    for name, about in HEAD_FILES.items():
        path = _head_file(name, folders)
        licence = FLAME_LICENCE if name in FLAME_FILES else DECA_LICENCE
        rows.append(FileStatus(name.split(".")[0], name, "head hint (DECA/FLAME)", "found" if path else "missing",
                               str(path) if path else None, "CapHuman model folder" if path else None, None, about,
                               None, None, licence, False, "" if path else about))
    return [row.to_dict() for row in rows]


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
        else:
            state = " ".join(filter(None, [row["status"] if row["status"] != "differs" else "found",
                                           marks[row["verified"]]]))
        where = f"{row['where']}: `{row['path']}`" if row["path"] else ""
        lines.append(f"| `{row['file']}` | {row['role']} | {state} | {where} | {row['licence']} |")
    return "\n".join(lines)
