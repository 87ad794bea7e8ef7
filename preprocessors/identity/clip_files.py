"""Where the CLIP ViT-L/14 vision tower is found on a user's disk, and reading only that tower from the file.

Looked for in this order (the first that exists wins):
1. the CapHuman file itself, or its converted file (`control_cond_stage_model.transformer.*` / `clip_vision.*`);
2. a CLIP file in the CapHuman model folders (`clip-vit-large-patch14.safetensors`, `clip_vitl.pth`, ... or a
   `clip-vit-large-patch14/` folder holding the hub's `model.safetensors` / `pytorch_model.bin`);
3. sd-webui-controlnet's copy: `<annotator models>/clip_vision/clip_vitl.pth`, where `<annotator models>` is its
   `control_net_modules_path` setting, `--controlnet-annotator-models-path`, or `<extension>/annotator/downloads`;
4. a Hugging Face cache of `openai/clip-vit-large-patch14` (`$HF_HUB_CACHE`, `$HF_HOME/hub`, ~/.cache/huggingface);
5. with downloads allowed, the hub's `model.safetensors` (size and SHA-256 checked) into the first model folder.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import weights

HUB_REPO_FOLDER = "models--openai--clip-vit-large-patch14"
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
CAPHUMAN_PREFIXES = ("control_cond_stage_model.transformer.", "clip_vision.")
VISION_PREFIX = "vision_model."
# names a ViT-L/14 CLIP file goes by in model folders (the webui's, ComfyUI's, sd-webui-controlnet's)
FOLDER_FILENAMES = ("clip-vit-large-patch14.safetensors", "clip_vit_large_patch14.safetensors",
                    "clip-vit-large-patch14.bin", "clip_vitl.pth")
CONTROLNET_FILES = (Path("clip_vision") / "clip_vitl.pth",)
CONTROLNET_EXTENSION_NAMES = ("sd-webui-controlnet",)


@dataclass(frozen=True)
class ClipVisionFile:
    """A file holding the tower: `where` says which kind of place it was found in; `prefix` is the tower's key
    prefix inside it ("" for files keyed `vision_model.*`)."""

    path: Path
    where: str
    prefix: str = ""


@dataclass
class ClipSearch:
    """Everything the search looks at; the webui fills `annotator_dirs` (see `controlnet_annotator_dirs`)."""

    caphuman_file: Path | None = None
    folders: list[Path] = field(default_factory=list)
    annotator_dirs: list[Path] = field(default_factory=list)
    hub_caches: list[Path] | None = None  # None: from the environment (`hub_cache_dirs`)
    allow_download: bool = False


def controlnet_annotator_dirs(extension_dirs: Iterable[Path | str] = (), annotator_models_path: str | None = None,
                              modules_path_setting: str | None = None, data_path: Path | str | None = None
                              ) -> list[Path]:
    """sd-webui-controlnet's annotator model folders, as it chooses them: its `control_net_modules_path` setting,
    else `--controlnet-annotator-models-path`, else `<extension>/annotator/downloads` (relative paths are under the
    webui's data path). All are returned (most specific first): a user may have changed the setting since."""
    folders: list[Path] = []
    for configured in (modules_path_setting, annotator_models_path):
        if configured:
            path = Path(configured)
            if not path.is_absolute() and data_path is not None:
                path = Path(data_path) / path
            folders.append(path)
    for root in extension_dirs:
        root = Path(root)
        if not root.is_dir():
            continue
        for extension in sorted(root.iterdir()):
            if extension.name.lower() in CONTROLNET_EXTENSION_NAMES or "controlnet" in extension.name.lower():
                folders.append(extension / "annotator" / "downloads")
    return list(dict.fromkeys(folders))


def hub_cache_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The Hugging Face hub caches to look in, as huggingface_hub resolves them (plus the legacy variables)."""
    env = os.environ if environ is None else environ
    home = Path(env["HF_HOME"]) if env.get("HF_HOME") else \
        Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    candidates = [env.get("HF_HUB_CACHE"), env.get("HUGGINGFACE_HUB_CACHE"), env.get("TRANSFORMERS_CACHE"),
                  home / "hub"]
    return list(dict.fromkeys(Path(c).expanduser() for c in candidates if c))


def hub_files(cache: Path) -> list[Path]:
    """The repo's weight files in one hub cache: the `main` snapshot first, then the newest others."""
    repo = Path(cache) / HUB_REPO_FOLDER
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return []
    main = repo / "refs" / "main"
    first = main.read_text().strip() if main.is_file() else None
    revisions = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: (p.name != first,
                                                                                      -p.stat().st_mtime))
    return [rev / name for rev in revisions for name in HUB_FILES if (rev / name).is_file()]


def caphuman_prefix(path: Path) -> str | None:
    """The prefix under which a CapHuman file stores the CLIP tower, None if it holds none (cached by the file's
    path, size and mtime: a multi-GB checkpoint's keys are read once)."""
    stat = Path(path).stat()
    return _caphuman_prefix(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _caphuman_prefix(path: str, size: int, mtime: int) -> str | None:
    keys = _keys(Path(path))
    return next((p for p in CAPHUMAN_PREFIXES if any(k.startswith(p) for k in keys)), None)


def find_clip_vision(search: ClipSearch) -> ClipVisionFile | None:
    """The first place in the documented order that holds the tower (nothing is downloaded here)."""
    if search.caphuman_file is not None and Path(search.caphuman_file).is_file():
        prefix = caphuman_prefix(Path(search.caphuman_file))
        if prefix is not None:
            return ClipVisionFile(Path(search.caphuman_file), "CapHuman file", prefix)
    for folder in map(Path, search.folders):
        for candidate in [folder / n for n in FOLDER_FILENAMES] + \
                         [folder / "clip-vit-large-patch14" / n for n in HUB_FILES]:
            if candidate.is_file():
                return ClipVisionFile(candidate, "CapHuman model folder")
    for folder in map(Path, search.annotator_dirs):
        for relative in CONTROLNET_FILES:
            if (folder / relative).is_file():
                return ClipVisionFile(folder / relative, "sd-webui-controlnet")
    caches = hub_cache_dirs() if search.hub_caches is None else search.hub_caches
    for cache in caches:
        files = hub_files(cache)
        if files:
            return ClipVisionFile(files[0], "Hugging Face cache")
    return None


def places_looked(search: ClipSearch) -> list[str]:
    caches = hub_cache_dirs() if search.hub_caches is None else search.hub_caches
    return ([str(search.caphuman_file)] if search.caphuman_file else []) + \
        [str(f) for f in search.folders] + [str(Path(f) / CONTROLNET_FILES[0]) for f in search.annotator_dirs] + \
        [str(Path(c) / HUB_REPO_FOLDER) for c in caches]


def missing_message(search: ClipSearch) -> str:
    model = weights.CLIP_VISION
    target = Path(search.folders[0]) if search.folders else weights.EXTENSION_MODELS
    return (f"CLIP ViT-L/14 vision weights not found: CapHuman reads them from openai/clip-vit-large-patch14. "
            f"Put {model.url} ({model.size:,} bytes) in {target} as {model.filename}, or turn on automatic "
            f"downloads (sd-webui-controlnet's clip_vision/clip_vitl.pth and a Hugging Face cache also work). "
            f"Looked in: {'; '.join(places_looked(search))}")


def locate_clip_vision(search: ClipSearch, progress: weights.Progress | None = None) -> ClipVisionFile:
    """`find_clip_vision`, else the download when allowed, else one message naming the file and where it goes."""
    found = find_clip_vision(search)
    if found is not None:
        if found.where != "CapHuman file":
            check = weights.verify(found.path, weights.CLIP_VISION)
            if check.verified is False:
                weights.LOG.warning("CapHuman: %s", check.message)
        return found
    if not search.allow_download:
        raise weights.ModelFileMissingError(missing_message(search))
    target = Path(search.folders[0]) if search.folders else weights.EXTENSION_MODELS
    return ClipVisionFile(weights.download(weights.CLIP_VISION, target, progress), "downloaded")


def read_clip_vision(file: ClipVisionFile) -> dict[str, torch.Tensor]:
    """Only the vision tower's tensors, keyed `vision_model.*` (a full CLIP file's text tower is never read)."""
    from safe_files.weights import SAFETENSORS_SUFFIXES, WeightFileError, load_pickled_weights, open_safetensors

    path, keep = Path(file.path), file.prefix + VISION_PREFIX
    if file.prefix in CAPHUMAN_PREFIXES:  # CapHuman stores transformers' CLIPVisionModel: `<prefix>vision_model.*`
        keep = file.prefix
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        try:
            with open_safetensors(path) as handle:
                state = {k: handle.get_tensor(k) for k in handle.keys() if k.startswith(keep)}
        except WeightFileError:
            raise
        except Exception as error:  # noqa: BLE001 - named below
            raise WeightFileError(f"{path}: cannot read it as safetensors ({error})") from error
    else:
        data = load_pickled_weights(path)  # memory-mapped: tensors not kept are never read
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if not isinstance(data, dict):
            raise WeightFileError(f"{path}: expected a state dict, found {type(data).__name__}")
        state = {k: v for k, v in data.items() if isinstance(v, torch.Tensor) and k.startswith(keep)}
    state = {k[len(file.prefix):]: v for k, v in state.items()}
    if not any(k.startswith(VISION_PREFIX) or k.startswith("embeddings.") for k in state):
        raise WeightFileError(f"{path} ({file.where}) holds no CLIP vision tower (no {keep}* tensors)")
    return state


def _keys(path: Path) -> list[str]:
    from safe_files.weights import SAFETENSORS_SUFFIXES, WeightFileError, load_pickled_weights, open_safetensors

    path = Path(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        try:
            with open_safetensors(path) as handle:
                return list(handle.keys())
        except WeightFileError:
            raise
        except Exception as error:  # noqa: BLE001
            raise WeightFileError(f"{path}: cannot read it as safetensors ({error})") from error
    data = load_pickled_weights(path)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    return list(data) if isinstance(data, dict) else []
