"""Where CapHuman's files are looked for: the extension's models/ and the webui's models/CapHuman."""

from __future__ import annotations

from pathlib import Path

EXTENSION_MODELS = Path(__file__).resolve().parents[2] / "models"
WEIGHT_SUFFIXES = (".ckpt", ".safetensors", ".pth", ".pt")


def model_folders(webui_models: Path | None = None, extra: list[Path] | None = None) -> list[Path]:
    folders = [Path(p) for p in (extra or [])]
    if webui_models is not None:
        folders.append(Path(webui_models) / "CapHuman")
    folders.append(EXTENSION_MODELS)
    return folders


def list_capface_models(folders: list[Path]) -> dict[str, Path]:
    """name -> path of every CapHuman checkpoint candidate (caphuman*.ckpt / *.safetensors)."""
    found: dict[str, Path] = {}
    for folder in folders:
        try:
            if not folder.is_dir():
                continue
            names = sorted(folder.iterdir())
        except OSError:  # a folder the webui may not read: nothing found there
            continue
        for path in names:
            if path.suffix.lower() in (".ckpt", ".safetensors") and "caphuman" in path.name.lower():
                found.setdefault(path.name, path)
    return found
