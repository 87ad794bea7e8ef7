"""The CapHuman section of the webui's Settings, and reading it into a `services.Settings` once per job."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from preprocessors.identity.clip_files import controlnet_annotator_dirs

from ..services import Settings
from ..unit.models import model_folders

SECTION = ("caphuman", "CapHuman")
# option key -> (default, label, gradio component name or None, its arguments)
OPTIONS: dict[str, tuple[Any, str, str | None, dict]] = {
    "caphuman_units": (2, "Number of CapHuman units (restart the UI)", "Slider",
                       {"minimum": 1, "maximum": 4, "step": 1}),
    "caphuman_model_dir": ("", "Extra CapHuman model folder", None, {}),
    "caphuman_auto_download": (True, "Download free model files on first use", None, {}),
    "caphuman_offload": (False, "Move CapHuman models to the CPU after each generation "
                         "(always on with --medvram / --lowvram)", None, {}),
    "caphuman_score": (False, "Score CapHuman results: identity similarity and head-control "
                       "errors in the infotext, and an overlay of the target head", None, {}),
    "caphuman_cache_size": (16, "Photos remembered by the identity and head caches", "Slider",
                            {"minimum": 1, "maximum": 128, "step": 1}),
}


def option(shared: ModuleType, name: str) -> Any:
    """The option's value, its default before the webui has loaded the settings."""
    return getattr(shared.opts, name, OPTIONS[name][0])


def register_options(shared: ModuleType) -> None:
    """`on_ui_settings`: add the CapHuman section."""
    import gradio as gr

    for key, (default, label, component, arguments) in OPTIONS.items():
        if component is None:
            info = shared.OptionInfo(default, label, section=SECTION)
        else:
            info = shared.OptionInfo(default, label, getattr(gr, component), arguments, section=SECTION)
        shared.opts.add_option(key, info)


def model_dirs(shared: ModuleType, paths: ModuleType) -> list[Path]:
    """The folders searched for model files: the webui's models/CapHuman, the extension's, the setting's."""
    extra = [Path(p) for p in [option(shared, "caphuman_model_dir")] if p]
    return model_folders(Path(paths.models_path), extra)


def annotator_dirs(shared: ModuleType, paths: ModuleType) -> list[Path]:
    """sd-webui-controlnet's annotator folders (a CLIP ViT-L/14 copy many users already have)."""
    options = getattr(shared.opts, "data", None) or {}
    return controlnet_annotator_dirs(
        extension_dirs=[p for p in (getattr(paths, "extensions_dir", None),
                                    getattr(paths, "extensions_builtin_dir", None)) if p],
        annotator_models_path=getattr(getattr(shared, "cmd_opts", None), "controlnet_annotator_models_path", None),
        modules_path_setting=options.get("control_net_modules_path"), data_path=getattr(paths, "data_path", None))


def read_settings(shared: ModuleType, paths: ModuleType, low_vram: bool) -> Settings:
    """The settings now; `low_vram`: the host runs with --medvram / --lowvram (offload whatever the setting)."""
    return Settings(folders=tuple(model_dirs(shared, paths)), annotator_dirs=tuple(annotator_dirs(shared, paths)),
                    allow_download=option(shared, "caphuman_auto_download"),
                    cache_size=int(option(shared, "caphuman_cache_size")),
                    offload=bool(option(shared, "caphuman_offload")) or low_vram,
                    score=bool(option(shared, "caphuman_score")))


def photo_root(paths: ModuleType) -> Path:
    """Where the photo store keeps the photos of generated images."""
    return Path(getattr(paths, "data_path", None) or Path(paths.models_path).parent) / "caphuman" / "photos"
