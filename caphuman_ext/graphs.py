"""Replay one UNet call's CapFace work as a CUDA graph.

Within a generation the shapes, controls and row layout are fixed, so the whole CapFace pass (all controls, masks,
row expansion) is captured once and replayed each step with the new latent and timesteps: one launch instead of
hundreds, which is what the webui's launch-bound eager UNet step feels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

Compute = Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]]


class CapturedCall:
    """A captured `compute(x, timesteps)` with static input buffers."""

    def __init__(self, compute: Compute, x: torch.Tensor, timesteps: torch.Tensor, warmup: int = 2) -> None:
        self.x = x.detach().clone()
        self.timesteps = timesteps.detach().clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                compute(self.x, self.timesteps)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.outputs = compute(self.x, self.timesteps)

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor) -> list[torch.Tensor]:
        self.x.copy_(x)
        self.timesteps.copy_(timesteps)
        self.graph.replay()
        return self.outputs


class GraphCache:
    """Captured calls keyed by everything that fixes their kernels; eager fallback when capture is impossible."""

    def __init__(self, max_graphs: int = 4) -> None:
        self.max_graphs = max_graphs
        self.calls: OrderedDict[Hashable, CapturedCall] = OrderedDict()
        self.disabled_reason: str | None = None

    def run(self, key: Hashable, compute: Compute, x: torch.Tensor, timesteps: torch.Tensor) -> list[torch.Tensor]:
        if self.disabled_reason is not None or x.device.type != "cuda" or torch.is_grad_enabled() \
                or torch.cuda.is_current_stream_capturing():
            return compute(x, timesteps)
        call = self.calls.get(key)
        if call is None:
            try:
                call = CapturedCall(compute, x, timesteps)
            except Exception as error:  # noqa: BLE001 - any capture failure means: stay eager
                self.disabled_reason = f"{type(error).__name__}: {error}"
                return compute(x, timesteps)
            self.calls[key] = call
            while len(self.calls) > self.max_graphs:
                self.calls.popitem(last=False)
        else:
            self.calls.move_to_end(key)
        return call(x, timesteps)

    def clear(self) -> None:
        self.calls.clear()
