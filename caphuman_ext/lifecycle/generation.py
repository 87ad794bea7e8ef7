"""One generation's CapHuman state: its units, the hints it rendered per sampling pass, the hook on the UNet being
sampled, and the error that stops it. Created by a host adapter for one job and dropped with it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..capface import CapFace
from ..control import CapFaceControl
from ..graphs import GraphCache, release_shared_graphs, shared_graphs
from ..hook import IncompatibleUNetError, UNetHook, check_compatible
from .geometry import Frame, render_plan
from .rows import RowPlan


class CapHumanError(RuntimeError):
    """Stops the generation; the message is for the user."""


@dataclass
class PreparedUnit:
    """A unit ready to sample: its parameters (a `UnitParams`), CapFace and identity context (1, 258, C)."""

    params: object
    capface: CapFace
    context: torch.Tensor
    position: int = 0  # the unit's tab / API index (infotext key)
    model_name: str = ""  # the CapHuman file it came from (for messages)


# (unit params, canvas width, canvas height) -> hint (1, 9, H, W) of the whole canvas
RenderCanvas = Callable[[object, int, int], torch.Tensor]


def hint_for_frame(render: RenderCanvas, params: object, frame: Frame, latent_hw: tuple[int, int]) -> torch.Tensor:
    """The hint for a latent of `latent_hw` covering `frame.box`: exactly (1, 9, 8h, 8w)."""
    plan = render_plan(frame, latent_hw)
    canvas = render(params, *plan.size)
    x, y, w, h = plan.crop
    hint = canvas[..., y:y + h, x:x + w]
    if plan.needs_resize:
        hint = F.interpolate(hint, size=(plan.hint[1], plan.hint[0]), mode="bilinear", align_corners=False)
    return hint.contiguous()


def in_window(progress: float, start: float, end: float) -> bool:
    """Whether a unit with window [start, end] (fractions of a pass's steps) acts at `progress` in [0, 1)."""
    return start <= progress and (progress < end or end >= 1.0)


class Generation:
    """What CapHuman does for one job.

    `attach(unet, frame, latent_hw)` at each sampling start (hints rendered for that latent, cached per frame and
    size; the hook moved to `unet` if it is another model), `step(progress, plan)` each sampling step,
    `follow(unet)` when the host swaps the model mid-sampling (refiner), `detach()` when a sampling ends,
    `close()` at the end of the job. `fail(message)` records an error that the host raises from the next point it
    does not swallow (`raise_if_failed`, or the UNet's first call through `arm_failure`).
    """

    def __init__(self, units: Sequence[PreparedUnit], render: RenderCanvas, offload: bool = False,
                 graphs: GraphCache | None = None) -> None:
        self.units = list(units)
        self.render = render
        self.offload = offload
        # captured CapFace passes: kept across generations (a graph copies in each generation's hint and context)
        self.graphs = graphs if graphs is not None else shared_graphs()
        self.error: str | None = None
        self.controls: list[CapFaceControl] = []
        self.hook: UNetHook | None = None
        self._hints: dict[tuple, list[torch.Tensor]] = {}
        self._hint_sources: list[torch.Tensor] = []  # the rendered hints the controls hold (or were adopted from)
        self._failure: torch.utils.hooks.RemovableHandle | None = None
        self.extras: list = []  # images the host adds to the job's output (score overlays)
        self.described: set[int] = set()  # unit positions whose infotext this job wrote

    @classmethod
    def failed(cls, message: str) -> Generation:
        generation = cls([], render=lambda *_: None)
        generation.error = message
        return generation

    # errors ------------------------------------------------------------------------------------------------------
    def fail(self, message: str, unet: nn.Module | None = None) -> None:
        """Record the first error; with `unet`, its next call raises it (hosts swallow errors elsewhere)."""
        self.error = self.error or message
        self.detach()
        if unet is not None:
            self.arm_failure(unet)

    def arm_failure(self, unet: nn.Module) -> None:
        def stop(module: nn.Module, args: tuple) -> None:
            self.disarm_failure()
            raise CapHumanError(self.error)

        self.disarm_failure()
        self._failure = unet.register_forward_pre_hook(stop)

    def disarm_failure(self) -> None:
        if self._failure is not None:
            self._failure.remove()
            self._failure = None

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise CapHumanError(self.error)

    # sampling ----------------------------------------------------------------------------------------------------
    def hints(self, frame: Frame, latent_hw: tuple[int, int]) -> list[torch.Tensor]:
        key = (frame, tuple(latent_hw))
        if key not in self._hints:
            self._hints[key] = [hint_for_frame(self.render, unit.params, frame, latent_hw) for unit in self.units]
        return self._hints[key]

    def arm(self, frame: Frame, latent_hw: tuple[int, int],
            adopt: Callable[[torch.Tensor], torch.Tensor] = lambda hint: hint) -> list[CapFaceControl]:
        """The controls with this pass's hints (made once per frame and size); `adopt` turns a rendered hint into
        the tensor a control holds (Forge: out of inference mode). Raises CapHumanError after a failure."""
        self.raise_if_failed()
        hints = self.hints(frame, latent_hw)
        if not self.controls:
            self.controls = [CapFaceControl(unit.capface, hint=adopt(hint), context=unit.context,
                                            strength=float(unit.params.strength))
                             for unit, hint in zip(self.units, hints, strict=True)]
        else:
            for index, (control, hint) in enumerate(zip(self.controls, hints, strict=True)):
                if self._hint_sources[index] is not hint:
                    control.hint = adopt(hint)
        self._hint_sources = list(hints)
        return self.controls

    def attach(self, unet: nn.Module, frame: Frame, latent_hw: tuple[int, int]) -> None:
        """Hints for this pass's latent and the hook on `unet`; raises CapHumanError when they cannot be made."""
        self.arm(frame, latent_hw)
        self.follow(unet)

    def follow(self, unet: nn.Module) -> None:
        """Keep the hook on `unet`: moved there when the host samples another model (refiner, hires checkpoint)."""
        if self.hook is not None and self.hook.unet is unet:
            if not self.hook.installed:
                self.hook.install()
            return
        if self.hook is not None:
            self.hook.remove()
            self.hook = None
        try:
            self.hook = UNetHook(unet, self.controls, graphs=self.graphs).install()
        except IncompatibleUNetError as error:
            raise CapHumanError(f"CapHuman: {error}") from error

    def step(self, progress: float, plan: RowPlan | None) -> None:
        """Per sampling step: each unit's window and pose-only phase at `progress` (fraction of this pass's
        steps), and the step's CFG row layout."""
        for unit, control in zip(self.units, self.controls, strict=True):
            params = unit.params
            control.active = in_window(progress, params.start, params.end)
            control.identity_on = progress >= params.pose_only
        if self.hook is not None:
            self.hook.row_plan = plan

    def detach(self) -> None:
        """Sampling ended: no hook stays (later passes of other scripts see a plain UNet)."""
        if self.hook is not None:
            self.hook.detach()
            self.hook.row_plan = None
        self.disarm_failure()
        if self.offload:
            for unit in self.units:
                unit.capface.to("cpu")
            if self.graphs is shared_graphs():
                release_shared_graphs()  # their weights moved: the graphs are invalid and hold GPU memory

    def close(self) -> None:
        self.detach()
        if self.hook is not None:
            self.hook.remove()
        self.hook = None
        self._hints.clear()
        self.graphs.release_sources()  # graphs stay; this job's tensors go

    def acted(self) -> list[bool]:
        """Per unit: whether any UNet pass received its residuals."""
        return [bool(self.controls) and control.applied_calls > 0 for control in self.controls] or \
            [False] * len(self.units)


__all__ = ["CapHumanError", "Generation", "PreparedUnit", "check_compatible", "hint_for_frame", "in_window"]
