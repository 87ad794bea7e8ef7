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
    """A captured `compute(x, timesteps, inputs)` reading only static buffers it owns. `nbytes`: the memory it keeps
    (its pool, as the allocator's reserved memory grew during the capture, and its static buffers)."""

    nbytes = 0

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
            reserved = torch.cuda.memory_reserved(x.device)
            self.graph.capture_begin(capture_error_mode="thread_local")
            try:
                self.outputs = compute(self.x, self.timesteps, self.inputs)
            finally:
                self.graph.capture_end()
            pool = torch.cuda.memory_reserved(x.device) - reserved  # the graph's private pool: what it keeps
        main.wait_stream(side)
        static = [self.x, self.timesteps, *self.inputs]
        self.nbytes = max(0, pool) + sum(t.numel() * t.element_size() for t in static)

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


GB = 1 << 30
# the share of the card that kept graphs may hold between generations: the webui's plain mode, and its --medvram /
# --lowvram (or CapHuman's "offload after use"), where everything CapHuman keeps goes back to the CPU between samplings
# anyway and only the graphs of the current sampling remain
KEEP_SHARE = {"normal": 1 / 8, "low": 1 / 32}


def card_bytes(device: torch.device) -> int:
    """The memory this process may use on `device`: the card's, times the per-process fraction when one is set."""
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if callable(fraction):
        try:
            total = int(total * min(1.0, float(fraction(device))))
        except (RuntimeError, TypeError, ValueError):
            pass
    return total


def graph_budget(total_bytes: int, low_vram: bool = False) -> int:
    """Bytes the kept graphs may hold on a card of `total_bytes` (`low_vram`: the webui's --medvram / --lowvram):
    an 8 GB card keeps 1 GB of graphs (256 MB with the flags), a 24 GB card 3 GB."""
    return int(total_bytes * KEEP_SHARE["low" if low_vram else "normal"])


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class GraphCache:
    """Captured calls keyed by everything that fixes their kernels; eager fallback when capture is impossible.

    Bounded twice: at most `max_graphs` kept, and at most `max_bytes` of memory held by them (each holds its own
    memory pool: CapFace's activations for its shape, plus its static buffers). `max_bytes=None`: derived at the first
    capture from the card (`graph_budget(card_bytes(device), low_vram)`). The least recently used go first; the graph
    just captured or replayed is always kept (it serves the sampling under way). `drop(reason)` releases them all
    (memory pressure: an out-of-memory retry, CapFace or a model moved); a later call of the same key captures anew
    and copies every input in, so a drop costs a capture, never a stale result. A capture that runs out of memory
    drops the kept graphs and tries once more; if that fails too, the call runs eager (nothing is disabled for good).
    """

    def __init__(self, max_graphs: int = 4, max_bytes: int | None = None, low_vram: bool = False) -> None:
        self.max_graphs = max_graphs
        self.max_bytes = max_bytes
        self.low_vram = low_vram
        self.calls: OrderedDict[Hashable, CapturedCall] = OrderedDict()
        self.disabled_reason: str | None = None
        self.captures = 0  # how many graphs were captured (a benchmark and test counter)
        self.drops: list[str] = []  # why kept graphs were dropped, oldest first (diagnostics, tests)

    # overridable for the CPU stand-in of the tests ---------------------------------------------------------------
    def can_capture(self, x: torch.Tensor) -> bool:
        return x.device.type == "cuda" and not torch.cuda.is_current_stream_capturing()

    def capture(self, compute: Compute, x: torch.Tensor, timesteps: torch.Tensor,
                inputs: Sequence[torch.Tensor]) -> CapturedCall:
        return CapturedCall(compute, x, timesteps, inputs)

    def budget(self, x: torch.Tensor) -> int:
        if self.max_bytes is not None:
            return self.max_bytes
        if x.device.type != "cuda":
            return 1 << 62  # no card to share: the count alone bounds them
        return graph_budget(card_bytes(x.device), self.low_vram)

    # -------------------------------------------------------------------------------------------------------------
    @property
    def kept_bytes(self) -> int:
        return sum(getattr(call, "nbytes", 0) for call in self.calls.values())

    def drop(self, reason: str = "memory pressure") -> None:
        """Release every kept graph (their pools go back to the allocator); nothing else changes."""
        if self.calls:
            self.drops.append(reason)
        self.calls.clear()

    def _trim(self, budget: int) -> None:
        """Oldest first, until within `max_graphs` and `budget`; the most recent one stays."""
        while len(self.calls) > 1 and (len(self.calls) > self.max_graphs or self.kept_bytes > budget):
            self.calls.popitem(last=False)
            self.drops.append("over budget")

    def run(self, key: Hashable, compute: Compute, x: torch.Tensor, timesteps: torch.Tensor,
            inputs: Sequence[torch.Tensor] = ()) -> list[torch.Tensor]:
        if self.disabled_reason is not None or torch.is_grad_enabled() or not self.can_capture(x):
            return compute(x, timesteps, inputs)
        call = self.calls.get(key)
        if call is None:
            call = self._capture_or_none(compute, x, timesteps, inputs)
            if call is None:
                return compute(x, timesteps, inputs)
            self.captures += 1
            self.calls[key] = call
            self._trim(self.budget(x))
        else:
            self.calls.move_to_end(key)
        return call(x, timesteps, inputs)

    def _capture_or_none(self, compute: Compute, x: torch.Tensor, timesteps: torch.Tensor,
                         inputs: Sequence[torch.Tensor]) -> CapturedCall | None:
        for attempt in (0, 1):
            try:
                return self.capture(compute, x, timesteps, inputs)
            except Exception as error:  # noqa: BLE001 - any capture failure means: stay eager
                if not is_out_of_memory(error):
                    self.disabled_reason = f"{type(error).__name__}: {error}"
                    return None
                if attempt == 0:  # short of memory: give back what the kept graphs hold, then once more
                    self.drop("out of memory while capturing")
                    if x.device.type == "cuda":
                        torch.cuda.empty_cache()
        return None  # still short: this call runs eager, a later one may capture

    def release_sources(self) -> None:
        """Keep the graphs but no reference to the last generation's tensors."""
        for call in self.calls.values():
            call.release_sources()

    def clear(self) -> None:
        self.calls.clear()
        self.disabled_reason = None


_SHARED = GraphCache(max_graphs=4)  # a size and its hires pass, each with and without the pose-only phase; bytes:
# the card's share (`graph_budget`)


def shared_graphs() -> GraphCache:
    """The process-wide cache: a later generation of the same shape, layout, CapFace weights and strength replays
    the graph an earlier one captured (with its own hint, masks and context copied in)."""
    return _SHARED


def release_shared_graphs() -> None:
    """Drop every kept graph and its memory (CapFace moved off the GPU, a model unloaded)."""
    _SHARED.clear()


def drop_shared_graphs(reason: str = "memory pressure") -> None:
    """Memory pressure (an out-of-memory error in a generation): drop the kept graphs; later calls capture anew."""
    _SHARED.drop(reason)
