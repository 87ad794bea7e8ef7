"""The DECA/FLAME data folder: where each file is looked for, where it comes from, and loading only what the hint
needs (never running pickled code)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXTENSION_MODELS = Path(__file__).resolve().parents[2] / "models"

FLAME_SITE = "https://flame.is.tue.mpg.de"
DECA_RELEASE = "https://github.com/yfeng95/DECA (data folder; deca_model.tar from its README's Google Drive link)"
HEAD_FILES = {
    "generic_model.pkl": f"FLAME 2020 head model: register at {FLAME_SITE}, accept its licence, download "
                         "'FLAME 2020' and copy generic_model.pkl",
    "landmark_embedding.npy": f"FLAME landmark embedding from DECA's data folder ({DECA_RELEASE})",
    "head_template.obj": f"FLAME head template with UVs from DECA's data folder ({DECA_RELEASE})",
    "FLAME_texture.npz": f"FLAME texture space: at {FLAME_SITE} download 'FLAME texture space' (FLAME licence)",
    "deca_model.tar": f"DECA's trained model ({DECA_RELEASE})",
}


class MissingHeadAssetError(FileNotFoundError):
    """A DECA/FLAME file is missing; the message names it, where it goes and where it comes from."""


@dataclass(frozen=True)
class HeadAssets:
    """Paths of the files the 9-channel hint needs."""

    flame_model: Path
    landmark_embedding: Path
    head_template: Path
    flame_texture: Path
    deca_model: Path

    @classmethod
    def find(cls, folders: list[Path] | None = None) -> HeadAssets:
        """Look in each folder (and its `deca/` or `data/` subfolder) for every file; one error lists all missing."""
        folders = [Path(f) for f in (folders or [EXTENSION_MODELS])]
        candidates = [p for f in folders for p in (f, f / "deca", f / "data", f / "flame")]
        found, missing = {}, []
        for name, about in HEAD_FILES.items():
            path = next((c / name for c in candidates if (c / name).is_file()), None)
            if path is None:
                missing.append(f"{name} — {about}")
            found[name] = path
        if missing:
            where = ", ".join(str(f) for f in folders)
            raise MissingHeadAssetError("CapHuman's head model files are missing. Put them in " + where + ":\n- "
                                        + "\n- ".join(missing))
        return cls(found["generic_model.pkl"], found["landmark_embedding.npy"], found["head_template.obj"],
                   found["FLAME_texture.npz"], found["deca_model.tar"])
