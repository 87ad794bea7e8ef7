"""The residual engine: what every host calls to get CapFace's residuals for one UNet call.

Host-neutral. A host adapter only decides where the residuals are added (A1111: module hooks on the UNet's blocks;
Forge: a link of its ControlNet chain) and hands the engine the latent and timesteps as the UNet receives them. The
engine:

- takes the call's rows from the step's `RowPlan` and runs CapFace once per image (cond and uncond rows share one
  pass), and across the calls of one step when the host splits it;
- stacks the units that use one CapFace into one wider pass (`control.summed_residuals`);
- on CUDA, replays a captured graph of the whole pass (`graphs.GraphCache`, kept across generations) on a side stream
  that overlaps the UNet's input blocks; the host waits for it, GPU-side, only where the residuals are first read;
- makes no host synchronisation per step (index tensors are cached per layout).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from .control import CapFaceControl, summed_residuals, weights_key
from .graphs import GraphCache
from .rows import RowPlan

FLOAT8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                                         "float8_e5m2fnuz") if hasattr(torch, name))
Prologue = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
_INDEX_CACHE: dict[tuple, torch.Tensor] = {}  # (layout, device) -> gather index, kept: captured graphs read them
_INDEX_CACHE_SIZE = 64


def compute_dtype(unet_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype CapFace computes in: the UNet's, except storage-only float8 (the webui's "FP8 weight" setting),
    where it is the autocast dtype (CUDA: float16 by default) or float32 on the CPU."""
    if unet_dtype not in FLOAT8_DTYPES:
        return unet_dtype
    if device.type == "cuda":
        return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.float16
    return torch.float32


def half_autocast(dtype: torch.dtype, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast in CapFace's half dtype around its pass when the host samples without autocast (Forge casts its UNet
    manually): CapFace's ldm blocks normalise in float32 (`GroupNorm32`), which half weights refuse outside autocast
    ("mixed dtype"). Under autocast (A1111) nothing changes: the same kernels as the A1111 path."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and not torch.is_autocast_enabled("cuda"):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _index(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """A cached index tensor on `device` (made once per layout: a step makes no host-to-device copy)."""
    key = (tuple(values), device)
    index = _INDEX_CACHE.get(key)
    if index is None:
        index = _INDEX_CACHE[key] = torch.tensor(list(values), device=device)
        while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
            _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
    return index


def dedupe(sources: Sequence[int] | None, rows: int,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]] | None:
    """(one row per image, row -> its image's position, the images in order), or None when every row is distinct."""
    if sources is None or len(sources) != rows or len(set(sources)) == rows:
        return None
    order = tuple(dict.fromkeys(sources))
    first = [list(sources).index(s) for s in order]
    inverse = [order.index(s) for s in sources]
    return _index(first, device), _index(inverse, device), order


def _autocast_state() -> tuple:
    if not torch.is_autocast_enabled():
        return (False,)
    get_dtype = getattr(torch, "get_autocast_dtype", None)
    return (True, get_dtype("cuda") if get_dtype else torch.get_autocast_gpu_dtype())


@dataclass
class Pending:
    """One UNet call's residuals (13: input blocks shallowest first, then the middle block), maybe still being
    computed on a side stream: `wait()` before reading them (GPU-side, no host sync)."""

    residuals: list[torch.Tensor]
    controls: list[CapFaceControl]
    ready: tuple[torch.cuda.Event, torch.device] | None = None

    def wait(self) -> None:
        if self.ready is not None:
            event, device = self.ready
            torch.cuda.current_stream(device).wait_event(event)
            self.ready = None

    @property
    def middle(self) -> torch.Tensor:
        return self.residuals[-1]

    def skip(self, output_block: int) -> torch.Tensor:
        """The residual for the skip that output block `output_block` reads (the deepest input block's first)."""
        return self.residuals[len(self.residuals) - 2 - output_block]

    def delivered(self) -> None:
        """The UNet received them: count the call for each control (infotext: which units acted)."""
        for control in self.controls:
            control.applied_calls += 1


class ResidualEngine:
    """The summed, masked residuals of a set of controls, per UNet call.

    plan: the current `RowPlan` (a host sets it each sampling step); None: every row computed on its own.
    graphs: the `GraphCache` to capture into (`graphs.shared_graphs()` keeps captures across generations); None with
    `cuda_graphs=False`: always eager. overlap: on CUDA, compute on a side stream.
    """

    def __init__(self, controls: Sequence[CapFaceControl], graphs: GraphCache | None = None,
                 cuda_graphs: bool = True, overlap: bool = True, plan: RowPlan | None = None) -> None:
        self.controls = list(controls)
        self.graphs = (graphs if graphs is not None else GraphCache()) if cuda_graphs else None
        self.overlap = overlap
        self.plan = plan
        self._weights: dict[int, tuple] = {}  # per CapFace: `weights_key`, taken while its weights stay put
        self._side_streams: dict[torch.device, torch.cuda.Stream] = {}
        self._step_result: tuple[RowPlan, tuple[int, ...], list[torch.Tensor]] | None = None

    def forget(self) -> None:
        """Drop what refers to the last sampling (weights may move before the next one)."""
        self._weights.clear()
        self._step_result = None

    # --------------------------------------------------------------------------------------------------------------
    def _shared_with_earlier_call(self, sources: Sequence[int] | None) -> list[torch.Tensor] | None:
        """This step's residuals from an earlier call of the same step: the rows this call needs, if that call
        computed every image it needs."""
        earlier, plan = self._step_result, self.plan
        if sources is None or earlier is None or plan is None or plan.step is None or earlier[0] is not plan:
            return None
        _, computed, residuals = earlier
        if tuple(sources) == computed:
            return residuals
        if not set(sources) <= set(computed):
            return None
        index = _index([computed.index(s) for s in sources], residuals[0].device)
        return [r.index_select(0, index) for r in residuals]

    def _weights_of(self, capface: torch.nn.Module) -> tuple:
        key = self._weights.get(id(capface))
        if key is None:
            key = self._weights[id(capface)] = weights_key(capface)
        return key

    def compute(self, x: torch.Tensor, timesteps: torch.Tensor, unet_dtype: torch.dtype,
                sources: Sequence[int] | None = None, prologue: Prologue | None = None,
                prologue_key: Hashable = None) -> Pending | None:
        """The residuals for UNet input `x` (B, C, h, w) at `timesteps` (B,), both as the UNet receives them; None
        when no control acts. sources: row -> image for this call (default: taken from `plan`).

        prologue: `x` and `timesteps` are what the host has before it makes the UNet's input (Forge: the noisy latent
        and sigma), and `prologue(x, timesteps)` makes it, as the host will, inside the captured pass (no autocast:
        the host computes it without). prologue_key: everything the prologue reads besides its two arguments, hashable
        and changing whenever that does (it is part of the graph's key); None: the prologue is run outside the
        graph."""
        active = [control for control in self.controls if control.enabled]
        if not active:
            return None
        if sources is None and self.plan is not None:
            sources = self.plan.take(x.shape[0])
        if sources is not None and len(sources) != x.shape[0]:
            sources = None
        shared = self._shared_with_earlier_call(sources)
        if shared is not None:
            return Pending(shared, active)
        if prologue is not None and prologue_key is None:
            with torch.no_grad():
                x, timesteps = prologue(x, timesteps)
            prologue = None
        dtype = compute_dtype(unet_dtype, x.device)
        for control in active:  # CapFace follows the UNet's device and dtype
            if control.capface.device != x.device or control.capface.dtype != dtype:
                control.capface.to(device=x.device, dtype=dtype)
                self._weights.pop(id(control.capface), None)
            control.check_latent(x)
        layout = dedupe(sources, x.shape[0], x.device)
        reps, inverse = (layout[0], layout[1]) if layout is not None else (None, None)
        bounds = [0]
        inputs: list[torch.Tensor] = []

        def run(x: torch.Tensor, timesteps: torch.Tensor,
                inputs: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
            if prologue is not None:
                with torch.autocast(x.device.type, enabled=False):
                    x, timesteps = prologue(x, timesteps)
            x_rows = x if reps is None else x.index_select(0, reps)
            t_rows = timesteps if reps is None else timesteps.index_select(0, reps)
            own = None if inputs is None else [list(inputs[bounds[i]:bounds[i + 1]]) for i in range(len(active))]
            total = summed_residuals(active, x_rows, t_rows, reps, own)
            if inverse is not None:
                total = [r.index_select(0, inverse) for r in total]
            return total

        with torch.no_grad(), half_autocast(dtype, x.device):
            if self.graphs is not None:
                for control in active:  # per-hint work stays outside the graph; the graph copies it in
                    inputs += control.prepare(x)
                    bounds.append(len(inputs))

            def replay_or_run() -> list[torch.Tensor]:
                if self.graphs is None:
                    return run(x, timesteps)
                # inference mode too: a graph captured in it (Forge samples so) holds inference tensors
                key = (tuple(x.shape), x.dtype, timesteps.dtype, x.device, _autocast_state(),
                       torch.is_inference_mode_enabled(), None if reps is None else tuple(sources),
                       tuple(control.graph_key(self._weights_of(control.capface)) for control in active),
                       tuple((tuple(t.shape), t.dtype) for t in inputs), prologue_key)
                return self.graphs.run(key, run, x, timesteps, inputs)

            ready = None
            if not (self.overlap and x.is_cuda):
                total = replay_or_run()
            else:
                main = torch.cuda.current_stream(x.device)
                side = self._side_streams.get(x.device)
                if side is None:
                    side = self._side_streams[x.device] = torch.cuda.Stream(device=x.device)
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    total = replay_or_run()
                for tensor in (x, timesteps):
                    tensor.record_stream(side)  # read on the side stream while the UNet goes on
                for tensor in total:
                    tensor.record_stream(main)  # made on the side stream, read by the UNet's blocks
                ready = (torch.cuda.Event(), x.device)
                ready[0].record(side)
        if sources is not None and self.plan is not None and self.plan.step is not None:
            self._step_result = (self.plan, tuple(sources), total)
        return Pending(total, active, ready)


__all__ = ["FLOAT8_DTYPES", "Pending", "ResidualEngine", "compute_dtype", "dedupe"]
