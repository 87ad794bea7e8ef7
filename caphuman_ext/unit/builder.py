"""Turn validated units into CapFace controls: models loaded once and cached, identity and hint computed with the
preprocessors (both cache by photo content)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from caphuman_ext.capface import CapFace
from caphuman_ext.checkpoint import load_capface
from caphuman_ext.lifecycle.generation import PreparedUnit
from preprocessors.head.assets import HeadAssets
from preprocessors.head.codes import DEFAULT_MODES
from preprocessors.head.pipeline import HeadHint, HeadPipeline, ManualHead
from preprocessors.identity import IdentityEncoder, IdentityModelPaths

from .models import list_capface_models
from .params import UnitParams, UnitValidationError


def manual_head(unit: UnitParams) -> ManualHead:
    light = None
    if unit.light_strength > 0:
        yaw, pitch = math.radians(unit.light_yaw), math.radians(unit.light_pitch)
        light = (math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch))
    return ManualHead(unit.yaw, unit.pitch, unit.roll, unit.center_x, unit.center_y, unit.scale, unit.expression,
                      unit.jaw_open, light, unit.light_strength or 1.0)


class UnitBuilder:
    """Holds the models between generations; `offload()` moves them to the CPU."""

    def __init__(self, folders: list[Path], allow_download: bool = True, cache_size: int = 16,
                 annotator_dirs: list[Path] | None = None) -> None:
        self.folders = folders
        self.annotator_dirs = list(annotator_dirs or [])  # sd-webui-controlnet's folders (its CLIP ViT-L/14 copy)
        self.allow_download = allow_download
        self.cache_size = cache_size
        self.capfaces: dict[Path, CapFace] = {}
        self.encoders: dict[Path, IdentityEncoder] = {}
        self.head: HeadPipeline | None = None

    def model_path(self, name: str) -> Path:
        models = list_capface_models(self.folders)
        if not models:
            raise UnitValidationError("model", "no CapHuman checkpoint found: put caphuman.ckpt (or the converted "
                                      "caphuman_capface.safetensors) in " + " or ".join(map(str, self.folders)))
        if not name:
            return next(iter(models.values()))
        if name not in models:
            raise UnitValidationError("model", f"{name!r} not found; available: {list(models)}")
        return models[name]

    def capface(self, path: Path) -> CapFace:
        if path not in self.capfaces:
            self.capfaces[path] = load_capface(path)
        return self.capfaces[path]

    def encoder(self, path: Path, device: torch.device) -> IdentityEncoder:
        if path not in self.encoders:
            paths = IdentityModelPaths(clip_vision=path, folders=self.folders, allow_download=self.allow_download,
                                       annotator_dirs=self.annotator_dirs)
            self.encoders[path] = IdentityEncoder(paths, device=device, cache_size=self.cache_size)
        return self.encoders[path]

    def head_pipeline(self, device: torch.device) -> HeadPipeline:
        if self.head is None:
            self.head = HeadPipeline(HeadAssets.find(self.folders), device=device, cache_size=self.cache_size)
        self.head.device = device
        return self.head

    def render(self, unit: UnitParams, width: int, height: int, device: torch.device) -> HeadHint:
        """The unit's head at W×H: posed by its pose photo, else by its sliders."""
        manual = None if unit.pose_image is not None else manual_head(unit)
        return self.head_pipeline(device).render(unit.reference_images[0], unit.pose_image,
                                                 unit.modes or DEFAULT_MODES, width, height, unit.resize_mode, manual,
                                                 face_index=unit.face_index,
                                                 allow_whole_image=unit.allow_whole_image)

    def hint(self, unit: UnitParams, width: int, height: int, device: torch.device) -> torch.Tensor:
        return self.render(unit, width, height, device).hint

    def prepare(self, unit: UnitParams, device: torch.device, position: int = 0) -> PreparedUnit:
        """CapFace and the identity context of a unit; its hint is rendered later, per sampling pass."""
        path = self.model_path(unit.model)
        capface = self.capface(path)
        identity = self.encoder(path, device).encode(unit.reference_images, unit.face_index, unit.allow_whole_image)
        with torch.no_grad():
            context = capface.identity_context(identity.clip_tokens, identity.face_embedding)
        return PreparedUnit(unit, capface, context.detach(), position, path.name)

    def offload(self) -> None:
        for capface in self.capfaces.values():
            capface.to("cpu")
        for encoder in self.encoders.values():
            encoder.offload()
        if self.head is not None:
            self.head.offload()
