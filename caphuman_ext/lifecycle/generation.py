"""One generation's CapHuman state: its units, the hints it rendered per sampling pass, the residual engine the host
attaches to the UNet it samples, and the error that stops it. Made by `lifecycle.job` for one job, dropped with it.
Imports nothing from the webui or from `caphuman_ext.hosts`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..capface import CapFace
from ..control import CapFaceControl
from ..engine import ResidualEngine
from ..graphs import GraphCache, release_shared_graphs, shared_graphs
from ..rows import RowPlan
from ..unit.params import ActIn
from .geometry import LATENT_SCALE, Frame
from .heads import render_picture


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
    h, w = latent_hw
    return render_picture(render, params, (w * LATENT_SCALE, h * LATENT_SCALE), frame)


def in_window(progress: float, start: float, end: float) -> bool:
    """Whether a unit with window [start, end] (fractions of a pass's steps) acts at `progress` in [0, 1)."""
    return start <= progress and (progress < end or end >= 1.0)


def acts_in_pass(passes: str, hires: bool) -> bool:
    """Whether a unit set to act in `passes` acts in this pass (`hires`: the hires-fix second pass)."""
    return passes == ActIn.BOTH or passes == (ActIn.HIRES if hires else ActIn.FIRST)


class Generation:
    """What CapHuman does for one job.

    `prepare_pass(frame, latent_hw, hires)` at each sampling start (hints rendered for that latent, cached per frame
    and size); the host then attaches `engine` to the UNet it samples. `step(progress, plan)` each sampling step,
    `end_sampling()` when a sampling ends, `close()` at the end of the job. `fail(message)` records an error that the
    host raises from the next point it does not swallow; `stop(note)` ends the units' work for the rest of the job
    without an error (a refiner of another model family took over).
    """

    def __init__(self, units: Sequence[PreparedUnit], render: RenderCanvas, offload: bool = False,
                 graphs: GraphCache | None = None) -> None:
        self.units = list(units)
        self.render = render
        self.offload = offload
        # captured CapFace passes: kept across generations (a graph copies in each generation's hint and context)
        self.graphs = graphs if graphs is not None else shared_graphs()
        if graphs is None and self.units:  # what the kept graphs may hold: the card's share, smaller with the low-VRAM flags
            self.graphs.low_vram = offload
        self.error: str | None = None
        self.stopped: str | None = None  # why the units stopped acting mid-job (shown in the infotext)
        self.closed = False
        self.controls: list[CapFaceControl] = []
        self.engine = ResidualEngine([], graphs=self.graphs)
        self.hires = False  # whether the current sampling pass is the hires-fix pass
        self._hints: dict[tuple, list[torch.Tensor]] = {}
        self._hint_sources: list[torch.Tensor] = []  # the rendered hints the controls hold (or were adopted from)
        self.extras: list = []  # images the host adds to the job's output (score overlays)
        self.described: set[int] = set()  # unit positions whose infotext this job wrote

    @classmethod
    def failed(cls, message: str) -> Generation:
        generation = cls([], render=lambda *_: None)
        generation.error = message
        return generation

    # errors ------------------------------------------------------------------------------------------------------
    def fail(self, message: str) -> None:
        """Record the first error (the host raises it from sampling; hosts swallow errors elsewhere)."""
        self.error = self.error or message
        self.end_sampling()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise CapHumanError(self.error)

    def stop(self, note: str) -> None:
        """The units add nothing more in this job (what was sampled so far is kept); `note` says why."""
        self.stopped = self.stopped or note
        for control in self.controls:
            control.active = False

    # sampling ----------------------------------------------------------------------------------------------------
    def hints(self, frame: Frame, latent_hw: tuple[int, int]) -> list[torch.Tensor]:
        key = (frame, tuple(latent_hw))
        if key not in self._hints:
            self._hints[key] = [hint_for_frame(self.render, unit.params, frame, latent_hw) for unit in self.units]
        return self._hints[key]

    def prepare_pass(self, frame: Frame, latent_hw: tuple[int, int], hires: bool = False,
                     adopt: Callable[[torch.Tensor], torch.Tensor] = lambda hint: hint) -> list[CapFaceControl]:
        """The controls with this pass's hints (made once per frame and size); `adopt` turns a rendered hint into
        the tensor a control holds (Forge: out of inference mode). Raises CapHumanError after a failure."""
        self.raise_if_failed()
        self.hires = hires
        hints = self.hints(frame, latent_hw)
        if not self.controls:
            self.controls = [CapFaceControl(unit.capface, hint=adopt(hint), context=unit.context,
                                            strength=float(unit.params.strength))
                             for unit, hint in zip(self.units, hints, strict=True)]
            self.engine.controls = list(self.controls)
        else:
            for index, (control, hint) in enumerate(zip(self.controls, hints, strict=True)):
                if self._hint_sources[index] is not hint:
                    control.hint = adopt(hint)
        self._hint_sources = list(hints)
        self.step(0.0, None)
        return self.controls

    def step(self, progress: float, plan: RowPlan | None) -> None:
        """Per sampling step: each unit's window, pass choice and pose-only phase at `progress` (fraction of this
        pass's steps), and the step's row layout."""
        for unit, control in zip(self.units, self.controls, strict=True):
            params = unit.params
            control.active = self.stopped is None and acts_in_pass(getattr(params, "passes", "both"), self.hires) \
                and in_window(progress, params.start, params.end)
            control.identity_on = progress >= params.pose_only
        self.engine.plan = plan

    def end_sampling(self) -> None:
        """Sampling ended: nothing refers to this sampling's rows; CapFace back to the CPU when offloading."""
        self.engine.plan = None
        self.engine.forget()
        if self.offload:
            for unit in self.units:
                unit.capface.to("cpu")
            if self.graphs is shared_graphs():
                release_shared_graphs()  # their weights moved: the graphs are invalid and hold GPU memory

    def close(self) -> None:
        self.end_sampling()
        self.closed = True
        self._hints.clear()
        self.graphs.release_sources()  # graphs stay; this job's tensors go

    def acted(self) -> list[bool]:
        """Per unit: whether any UNet pass received its residuals."""
        return [bool(self.controls) and control.applied_calls > 0 for control in self.controls] or \
            [False] * len(self.units)


__all__ = ["CapHumanError", "Generation", "PreparedUnit", "acts_in_pass", "hint_for_frame", "in_window"]
