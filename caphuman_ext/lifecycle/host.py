"""What the lifecycle needs from a webui: the small interface both host adapters implement with the same signatures."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ..rows import RowPlan
from .generation import Generation


class Host(Protocol):
    """A webui family (AUTOMATIC1111, Forge). `model` is the host's model object (`p.sd_model`-like)."""

    name: str

    def sampled_model(self, p, denoiser=None) -> object:
        """The model the host samples now (it follows a refiner switch, a hires checkpoint)."""

    def unet(self, model) -> nn.Module:
        """The model's UNet module (the one CapFace's widths are checked against)."""

    def attached(self, generation: Generation, model) -> bool:
        """Whether the residuals of `generation.engine` reach the UNet `model` samples."""

    def attach(self, generation: Generation, model) -> None:
        """Make the UNet `model` samples receive `generation.engine`'s residuals (idempotent)."""

    def detach(self, generation: Generation, final: bool = False) -> None:
        """A sampling ended (`final`: the job ended): nothing of `generation` acts on a later UNet call."""

    def fail(self, generation: Generation, model) -> None:
        """Make the sampling of `model` raise `generation.error` (hosts swallow errors raised in callbacks)."""

    def step_rows(self, params) -> RowPlan | None:
        """The row layout of this step's UNet calls (the `cfg_denoiser` callback's params), None if unknown."""

    def adopt(self, hint: torch.Tensor) -> torch.Tensor:
        """A rendered hint as the tensor a control may hold across this host's sampling."""

    def low_vram(self) -> bool:
        """Whether the webui runs with its low/medium VRAM flags (CapHuman then offloads between samplings)."""
