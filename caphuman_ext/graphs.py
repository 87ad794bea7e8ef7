"""Replay one UNet call's CapFace work as a CUDA graph, and keep captured graphs across generations.

The CapFace pass of a step (all controls, masks, row expansion) is captured once per shape/layout and replayed each
step: one launch instead of hundreds, which is what the webui's launch-bound eager UNet step feels.

A captured graph has baked in the addresses of everything it reads. So a `CapturedCall` reads only tensors it owns
(static buffers): the latent and timesteps, and the per-generation inputs (hint features, hard masks, identity
context), which are copied in before a replay whenever their source tensor is another object or was modified in
place. What the buffers cannot hold — CapFace's weights, strength, the row layout, shapes and dtypes — is part of the
cache key. A graph is therefore valid for any later generation with the same key, whatever its photo or hint:
`shared_graphs()` is the process-wide cache that generations use, so only the first generation of a shape captures.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch

Compute = Callable[[torch.Tensor, torch.Tensor, Sequence[torch.Tensor]], list[torch.Tensor]]
_UNTRACKED = object()  # version of a tensor without a version counter (inference tensors): never "unchanged"


def version_of(tensor: torch.Tensor) -> object:
    """The in-place modification counter of `tensor` (shared by its views)."""
    try:
        return tensor._version
    except RuntimeError:  # inference tensors track no version
        return _UNTRACKED


class CapturedCall:
    """A captured `compute(x, timesteps, inputs)` reading only static buffers it owns."""

    def __init__(self, compute: Compute, x: torch.Tensor, timesteps: torch.Tensor,
                 inputs: Sequence[torch.Tensor] = (), warmup: int = 2) -> None:
        self.x = x.detach().clone()
        self.timesteps = timesteps.detach().clone()
        self.inputs = [tensor.detach().clone() for tensor in inputs]
        self._sources: list[torch.Tensor | None] = list(inputs)  # strong refs: ids are never reused meanwhile
        self._versions = [version_of(tensor) for tensor in inputs]
        main = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(main)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                compute(self.x, self.timesteps, self.inputs)
            # capture_begin/end rather than `torch.cuda.graph`: that one synchronises the device and empties the
            # allocator's cache (the UNet's next call then allocates its activations from the driver again);
            # "thread_local" so that another thread of the host (live previews) cannot break the capture
            self.graph.capture_begin(capture_error_mode="thread_local")
            try:
                self.outputs = compute(self.x, self.timesteps, self.inputs)
            finally:
                self.graph.capture_end()
        main.wait_stream(side)

    def load(self, inputs: Sequence[torch.Tensor]) -> int:
        """Copy into the static buffers the inputs that changed since they were last copied; how many were."""
        if len(inputs) != len(self.inputs):
            raise ValueError(f"captured with {len(self.inputs)} inputs, called with {len(inputs)}")
        copied = 0
        for index, tensor in enumerate(inputs):
            version = version_of(tensor)
            if tensor is self._sources[index] and version is not _UNTRACKED and version == self._versions[index]:
                continue
            self.inputs[index].copy_(tensor)
            self._sources[index], self._versions[index] = tensor, version
            copied += 1
        return copied

    def release_sources(self) -> None:
        """Forget the source tensors (their memory may go); the next call copies every input again."""
        self._sources = [None] * len(self.inputs)

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor,
                 inputs: Sequence[torch.Tensor] = ()) -> list[torch.Tensor]:
        self.load(inputs)
        self.x.copy_(x)
        self.timesteps.copy_(timesteps)
        self.graph.replay()
        return self.outputs


class GraphCache:
    """Captured calls keyed by everything that fixes their kernels; eager fallback when capture is impossible.

    max_graphs bounds the number kept (each holds its own memory pool: CapFace's activations for its shape).
    """

    def __init__(self, max_graphs: int = 4) -> None:
        self.max_graphs = max_graphs
        self.calls: OrderedDict[Hashable, CapturedCall] = OrderedDict()
        self.disabled_reason: str | None = None
        self.captures = 0  # how many graphs were captured (a benchmark and test counter)

    def run(self, key: Hashable, compute: Compute, x: torch.Tensor, timesteps: torch.Tensor,
            inputs: Sequence[torch.Tensor] = ()) -> list[torch.Tensor]:
        if self.disabled_reason is not None or x.device.type != "cuda" or torch.is_grad_enabled() \
                or torch.cuda.is_current_stream_capturing():
            return compute(x, timesteps, inputs)
        call = self.calls.get(key)
        if call is None:
            try:
                call = CapturedCall(compute, x, timesteps, inputs)
            except Exception as error:  # noqa: BLE001 - any capture failure means: stay eager
                self.disabled_reason = f"{type(error).__name__}: {error}"
                return compute(x, timesteps, inputs)
            self.captures += 1
            self.calls[key] = call
            while len(self.calls) > self.max_graphs:
                self.calls.popitem(last=False)
        else:
            self.calls.move_to_end(key)
        return call(x, timesteps, inputs)

    def release_sources(self) -> None:
        """Keep the graphs but no reference to the last generation's tensors."""
        for call in self.calls.values():
            call.release_sources()

    def clear(self) -> None:
        self.calls.clear()
        self.disabled_reason = None


_SHARED = GraphCache(max_graphs=4)  # a size and its hires pass, each with and without the pose-only phase


def shared_graphs() -> GraphCache:
    """The process-wide cache: a later generation of the same shape, layout, CapFace weights and strength replays
    the graph an earlier one captured (with its own hint, masks and context copied in)."""
    return _SHARED


def release_shared_graphs() -> None:
    """Drop every kept graph and its memory (CapFace moved off the GPU, a model unloaded)."""
    _SHARED.clear()
