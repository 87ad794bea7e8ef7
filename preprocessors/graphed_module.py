"""A module whose forward is replayed as a CUDA graph per input shape.

Preprocessing runs its networks (CLIP vision, FaceNet, BiSeNet, DECA's encoder) on one image at a time: hundreds of
small kernels, each launched from Python, so their time is launch time. Replaying the captured forward runs the same
kernels on the same inputs — the same results — in one launch. Drop-in: `GraphedModule(model)` is called like
`model` and exposes its parameters.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_unflatten


class GraphedModule(nn.Module):
    """`module`, its forward replayed as a CUDA graph per input shape (at most `max_shapes` kept).

    Eager where a graph cannot serve: inputs not all on CUDA, grad enabled, a capture under way, or a capture that
    failed once (then for good). Moving the module (`.to`, `.cpu`, `.half`) drops its graphs: they read the weights
    where they were; a `.to` that moves nothing (the device and dtype it already has) keeps them.

    capture_after: a shape is captured the n-th time it is seen (1: at once); before, it runs eager. For inputs whose
    shape follows the photo (face parsing), so that a photo size seen once does not pay a capture.
    max_input_numel: inputs with more elements than this always run eager (a graph's pool holds the activations of
    its shape: a large photo's would stay on the GPU).
    """

    def __init__(self, module: nn.Module, max_shapes: int = 4, warmup: int = 2, capture_after: int = 1,
                 max_input_numel: int | None = None) -> None:
        super().__init__()
        self.module = module
        self.max_shapes = max_shapes
        self.warmup = warmup
        self.capture_after = capture_after
        self.max_input_numel = max_input_numel
        self._graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self._seen: OrderedDict[tuple, int] = OrderedDict()
        self.disabled_reason: str | None = None

    def _storage(self) -> list[tuple]:
        return [(t.data_ptr(), t.dtype, t.device) for t in (*self.module.parameters(), *self.module.buffers())]

    def _apply(self, fn, *args, **kwargs):
        before = self._storage()
        result = super()._apply(fn, *args, **kwargs)
        if self._storage() != before:  # something moved or was cast: the graphs read the old weights
            self._graphs.clear()
        return result

    def release(self) -> None:
        """Drop the captured graphs and their memory (the next call of a shape captures again)."""
        self._graphs.clear()

    def _key(self, flat: list, spec) -> tuple | None:
        parts: list = [torch.is_inference_mode_enabled()]  # a graph captured in it holds inference tensors
        for leaf in flat:
            if isinstance(leaf, torch.Tensor):
                if not leaf.is_cuda:
                    return None
                parts.append((tuple(leaf.shape), leaf.dtype, leaf.device, leaf.stride()))
            elif leaf is None or isinstance(leaf, (bool, int, float, str)):
                parts.append(leaf)
            else:
                return None
        return (str(spec), tuple(parts))

    def _capture(self, flat: list, spec) -> tuple:
        static = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in flat]
        args, kwargs = tree_unflatten(static, spec)
        device = next(leaf for leaf in flat if isinstance(leaf, torch.Tensor)).device
        main = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(main)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.module(*args, **kwargs)
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                outputs = self.module(*args, **kwargs)
            finally:
                graph.capture_end()
        main.wait_stream(side)
        out_flat, out_spec = tree_flatten(outputs)
        for leaf in out_flat:  # an output we cannot copy would be overwritten by the next replay
            if not (isinstance(leaf, torch.Tensor) or leaf is None or isinstance(leaf, (bool, int, float, str))):
                raise TypeError(f"output of type {type(leaf).__name__} cannot be handed out of a graph")
        return graph, static, out_flat, out_spec

    def forward(self, *args, **kwargs):
        if self.disabled_reason is not None or torch.is_grad_enabled() or torch.cuda.is_current_stream_capturing():
            return self.module(*args, **kwargs)
        flat, spec = tree_flatten((args, kwargs))
        key = self._key(flat, spec)
        if key is None or not any(isinstance(leaf, torch.Tensor) for leaf in flat):
            return self.module(*args, **kwargs)
        entry = self._graphs.get(key)
        if entry is None:
            if self.max_input_numel is not None and any(
                    isinstance(leaf, torch.Tensor) and leaf.numel() > self.max_input_numel for leaf in flat):
                return self.module(*args, **kwargs)
            seen = self._seen[key] = self._seen.get(key, 0) + 1
            self._seen.move_to_end(key)
            while len(self._seen) > 64:
                self._seen.popitem(last=False)
            if seen < self.capture_after:
                return self.module(*args, **kwargs)
            try:
                entry = self._capture(flat, spec)
            except torch.OutOfMemoryError:  # short of memory now, not unable: eager this time, no graph kept
                self._graphs.clear()
                return self.module(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any capture failure means: stay eager
                self.disabled_reason = f"{type(error).__name__}: {error}"
                self._graphs.clear()
                return self.module(*args, **kwargs)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_shapes:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        graph, static, out_flat, out_spec = entry
        for buffer, leaf in zip(static, flat, strict=True):
            if isinstance(buffer, torch.Tensor):
                buffer.copy_(leaf)
        graph.replay()
        # the outputs live in the graph's pool and the next replay overwrites them: hand out copies
        return tree_unflatten([leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in out_flat],
                              out_spec)


def graphed_on_cuda(module: nn.Module, device: torch.device | str, **options) -> nn.Module:
    """`module` wrapped in a `GraphedModule` when it runs on CUDA (already wrapped: as is); on any other device the
    module itself, untouched (its results stay those of the eager module, bit for bit)."""
    if isinstance(module, GraphedModule) or torch.device(device).type != "cuda":
        return module
    return GraphedModule(module, **options)


def _same_device(have: torch.device, want: torch.device) -> bool:
    return have.type == want.type and (want.index is None or have.index is None or have.index == want.index
                                       or want.type != "cuda")


def place(module: nn.Module, device: torch.device | str, dtype: torch.dtype | None = None) -> nn.Module:
    """`module.to(device, dtype)` only when its first tensor is elsewhere: `.to` walks every parameter and buffer
    (thousands for CLIP ViT-L, ResNet-50, Inception-ResNet), which the preprocessors paid on every photo."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    first = next(iter(module.parameters()), None)
    if first is None:
        first = next(iter(module.buffers()), None)
    if first is None or not _same_device(first.device, device) or (dtype is not None and first.dtype != dtype):
        module.to(device, dtype) if dtype is not None else module.to(device)
    return module
