"""The process-wide services of the extension, in one object the script creates and hands to the lifecycle.

    services = Services(read_settings, photo_root, device, free_memory)   # the webui's readers (webui/settings.py)
    services.refresh()                        # once per job (the script's `process`) and per UI / API request
    job.start(p, args, host, services)        # prepare / render / describe / offload, as lifecycle.job.JobServices

It holds the unit builder (the loaded models: rebuilt, dropping them, only when a model setting changes), the
scorer sharing its models, the photo store, the paste cache and the offload policy. No webui import: the settings
come from the `read_settings` callable, so it is tested without a fake webui.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .lifecycle.generation import PreparedUnit
from .model_files import model_status
from .unit.builder import UnitBuilder
from .unit.infotext import infotext_key, to_infotext
from .unit.params import UnitParams
from .unit.paste import PastedUnit, pasted_unit
from .unit.photo_store import PhotoStore

if TYPE_CHECKING:
    from .quality.scorer import Scorer

PASTE_CACHE_SIZE = 16


@dataclass(frozen=True)
class Settings:
    """The CapHuman settings of the host, read once per job."""

    folders: tuple[Path, ...]  # where model files are looked for
    annotator_dirs: tuple[Path, ...] = ()  # sd-webui-controlnet's annotator folders (a CLIP ViT-L/14 copy)
    allow_download: bool = True
    cache_size: int = 16  # photos remembered by the identity and head caches
    offload: bool = False  # move CapHuman's models off the GPU after use (the setting, or --medvram / --lowvram)
    score: bool = False  # score each image and add an overlay

    def builder_key(self) -> tuple:
        """What the unit builder is made from: a change rebuilds it (and drops its loaded models)."""
        return (list(self.folders), self.allow_download, self.cache_size, list(self.annotator_dirs))


class Services:
    """Builder, scorer, photo store, paste cache and offload policy of one webui process."""

    def __init__(self, read_settings: Callable[[], Settings], photo_root: Callable[[], Path],
                 device: Callable[[], torch.device], free_memory: Callable[[], None] = lambda: None) -> None:
        self._read_settings = read_settings
        self._photo_root = photo_root
        self._device = device
        self._free_memory = free_memory
        self.settings: Settings | None = None
        self._builder: UnitBuilder | None = None
        self._scorer: Scorer | None = None
        self._photo_store: PhotoStore | None = None
        self._pastes: dict[tuple[str, int], PastedUnit | None] = {}

    def refresh(self) -> Settings:
        """Read the host's settings now (a job's start, a UI or API request); until the next refresh they hold."""
        self.settings = self._read_settings()
        return self.settings

    def current(self) -> Settings:
        return self.settings if self.settings is not None else self.refresh()

    @property
    def offload(self) -> bool:
        return self.current().offload

    @property
    def folders(self) -> list[Path]:
        return list(self.current().folders)

    def builder(self) -> UnitBuilder:
        settings = self.current()
        if self._builder is None or (self._builder.folders, self._builder.allow_download, self._builder.cache_size,
                                     self._builder.annotator_dirs) != settings.builder_key():
            self._builder = UnitBuilder(*settings.builder_key())
        return self._builder

    def scorer(self) -> Scorer:
        """The quality scorer, sharing the unit builder's models."""
        from .quality.scorer import Scorer

        if self._scorer is None or self._scorer.builder is not self.builder():
            self._scorer = Scorer(builder=self.builder())
        return self._scorer

    def photo_store(self) -> PhotoStore:
        """Reference photos of generated images, keyed by the hash their infotext carries (for paste)."""
        if self._photo_store is None:
            self._photo_store = PhotoStore(self._photo_root())
        return self._photo_store

    def pasted(self, params: dict, index: int) -> PastedUnit | None:
        """One paste reads the photo store once per unit, not once per component."""
        key = (str(params.get(infotext_key(index))), index)
        if key not in self._pastes:
            if len(self._pastes) > PASTE_CACHE_SIZE:
                self._pastes.clear()
            self._pastes[key] = pasted_unit(params, index, self.photo_store())
        return self._pastes[key]

    # what a job uses (lifecycle.job.JobServices) --------------------------------------------------------------------
    def prepare(self, unit: UnitParams, position: int) -> PreparedUnit:
        return self.builder().prepare(unit, self._device(), position)

    def render(self, unit: UnitParams, width: int, height: int) -> torch.Tensor:
        """The unit's head hint on a width×height canvas."""
        return self.builder().hint(unit, width, height, self._device())

    def describe(self, unit: UnitParams) -> str:
        """A unit's infotext, its photos saved in the local store under the hashes written there."""
        store = self.photo_store()
        pose = store.save([unit.pose_image]) if unit.pose_image is not None else None
        return to_infotext(unit, store.save(unit.reference_images), pose)

    def after_use(self) -> None:
        """The offload policy: models off the GPU after a job when the settings say so."""
        if self.offload:
            self.builder().offload()
            self._free_memory()

    # what the UI and the API use ------------------------------------------------------------------------------------
    def preview(self, unit: UnitParams, width: int, height: int) -> dict:
        """Normal / albedo / shading / mask / landmark images of the unit's head."""
        self.refresh()
        result = self.builder().render(unit, width, height, self._device())
        return self.builder().head_pipeline(self._device()).preview(result, unit.pose_image, unit.resize_mode)

    def model_files(self, verify: bool = False, model: str = "") -> list[dict]:
        settings = self.refresh()
        return model_status(list(settings.folders), annotator_dirs=list(settings.annotator_dirs), verify=verify,
                            model=model)

    def score(self, payload: dict) -> dict:
        """`POST /caphuman/v1/score`."""
        from .quality.api import score_request

        self.refresh()
        return score_request(payload, self.scorer())
