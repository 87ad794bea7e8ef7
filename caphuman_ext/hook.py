"""Inject CapFace residuals into the webui's ldm UNet through PyTorch module hooks.

A pre-hook on the UNet reads the latent and timesteps and computes every control's masked, scaled residuals; a hook
on `middle_block` adds the last one to its output; pre-hooks on `output_blocks[i]` add residual `11 - i` to the skip
half of their concatenated input. Code that replaces `UNetModel.forward` (sd-webui-controlnet does) still calls
these blocks as modules, so both controls apply.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from types import TracebackType

import torch
from torch import nn

from .control import CapFaceControl
from .graphs import GraphCache


class IncompatibleUNetError(ValueError):
    """The loaded model is not an SD1.x-shaped UNet that CapFace can feed."""


def _check_compatible(unet: nn.Module, controls: Sequence[CapFaceControl]) -> None:
    for name in ("input_blocks", "middle_block", "output_blocks"):
        if not hasattr(unet, name):
            raise IncompatibleUNetError(f"CapHuman needs an ldm UNetModel; {type(unet).__name__} has no {name}")
    blocks = len(unet.output_blocks)
    for control in controls:
        config = control.capface.config
        if control.capface.num_residuals != blocks + 1 or getattr(unet, "model_channels", None) != \
                config.model_channels or tuple(getattr(unet, "channel_mult", ())) != tuple(config.channel_mult):
            raise IncompatibleUNetError(
                f"CapHuman's CapFace ({config.model_channels} channels x {list(config.channel_mult)}, "
                f"{control.capface.num_residuals - 1} blocks) does not fit this UNet "
                f"({getattr(unet, 'model_channels', '?')} channels x {list(getattr(unet, 'channel_mult', []))}, "
                f"{blocks} blocks): load an SD1.x checkpoint (SDXL is not supported)")


def _autocast_state() -> tuple:
    if not torch.is_autocast_enabled():
        return (False,)
    get_dtype = getattr(torch, "get_autocast_dtype", None)
    return (True, get_dtype("cuda") if get_dtype else torch.get_autocast_gpu_dtype())


class UNetHook:
    """Context manager that keeps CapFace hooks on a UNet exactly while it is open.

    row_sources: optional, per UNet call: for each latent row, a key; rows sharing a key share one CapFace pass
    (they must have the same latent, timestep, hint and identity, as the webui's cond/uncond rows do).
    cuda_graphs: on CUDA, capture the CapFace pass once per shape/layout and replay it each step.
    overlap: on CUDA, run the CapFace pass on a side stream, concurrently with the UNet's input blocks (its
    residuals are first needed after the middle block).
    """

    def __init__(self, unet: nn.Module, controls: Sequence[CapFaceControl],
                 row_sources: Sequence[int] | None = None, cuda_graphs: bool = True, overlap: bool = True) -> None:
        _check_compatible(unet, controls)
        self.unet = unet
        self.controls = list(controls)
        self.row_sources = row_sources
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._pending: list[torch.Tensor] | None = None
        self._index_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._signature = inspect.signature(type(unet).forward)
        self.graphs = GraphCache() if cuda_graphs else None
        self.overlap = overlap
        self._side_streams: dict[torch.device, torch.cuda.Stream] = {}
        self._ready: tuple[torch.cuda.Event, torch.device] | None = None

    # lifecycle -----------------------------------------------------------------------------------------------
    def __enter__(self) -> UNetHook:
        return self.install()

    def install(self) -> UNetHook:
        """Register the hooks (what entering the context does)."""
        if self._handles:
            return self
        self._unet_dtype = next(self.unet.parameters()).dtype
        try:
            self._handles.append(self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True))
            self._handles.append(self.unet.register_forward_hook(self._after_unet))
            self._handles.append(self.unet.middle_block.register_forward_hook(self._after_middle))
            for index, block in enumerate(self.unet.output_blocks):
                self._handles.append(block.register_forward_pre_hook(self._skip_adder(index)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    def detach(self) -> None:
        """Remove every hook but keep cached tensors and graphs for a later `install()`."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pending = None

    def remove(self) -> None:
        """Remove every hook and drop cached tensors and graphs; safe to call twice."""
        self.detach()
        self._index_cache.clear()
        if self.graphs is not None:
            self.graphs.clear()

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    # per UNet call -------------------------------------------------------------------------------------------
    def _latent_and_timesteps(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        bound = self._signature.bind_partial(self.unet, *args, **kwargs).arguments
        x, timesteps = bound.get("x"), bound.get("timesteps")
        if timesteps is not None and timesteps.dim() == 0:
            timesteps = timesteps.expand(x.shape[0])
        return x, timesteps

    def _dedupe(self, rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(representative rows, row -> representative position), or None when every row is distinct."""
        sources = self.row_sources
        if sources is None or len(sources) != rows or len(set(sources)) == rows:
            return None
        key = (tuple(sources), device)
        if key not in self._index_cache:
            order = list(dict.fromkeys(sources))
            first = [list(sources).index(s) for s in order]
            inverse = [order.index(s) for s in sources]
            self._index_cache[key] = (torch.tensor(first, device=device), torch.tensor(inverse, device=device))
        return self._index_cache[key]

    def _before_unet(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._pending = None
        active = [c for c in self.controls if c.enabled]
        if not active:
            return
        x, timesteps = self._latent_and_timesteps(args, kwargs)
        if x is None or timesteps is None:
            return
        for control in active:  # CapFace follows the UNet's device and dtype
            if control.capface.device != x.device or control.capface.dtype != self._unet_dtype:
                control.capface.to(device=x.device, dtype=self._unet_dtype)
        indices = self._dedupe(x.shape[0], x.device)
        reps, inverse = indices if indices is not None else (None, None)

        def compute(x: torch.Tensor, timesteps: torch.Tensor) -> list[torch.Tensor]:
            x_rows = x if reps is None else x.index_select(0, reps)
            t_rows = timesteps if reps is None else timesteps.index_select(0, reps)
            total: list[torch.Tensor] | None = None
            for control in active:
                outs = control.residuals(x_rows, t_rows, reps)
                total = outs if total is None else [a + b for a, b in zip(total, outs, strict=True)]
            if inverse is not None:
                total = [r.index_select(0, inverse) for r in total]
            return total

        with torch.no_grad():
            if self.graphs is not None:
                for control in active:
                    control.prepare(x)  # per-hint work stays outside the graph

            def run() -> list[torch.Tensor]:
                if self.graphs is None:
                    return compute(x, timesteps)
                key = (tuple(x.shape), x.dtype, timesteps.dtype, x.device, _autocast_state(),
                       None if reps is None else tuple(self.row_sources),
                       tuple(control.graph_key() for control in active))
                return self.graphs.run(key, compute, x, timesteps)

            if not (self.overlap and x.is_cuda):
                total = run()
            else:
                main = torch.cuda.current_stream(x.device)
                side = self._side_streams.get(x.device)
                if side is None:
                    side = self._side_streams[x.device] = torch.cuda.Stream(device=x.device)
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    total = run()
                for tensor in (x, timesteps):
                    tensor.record_stream(side)  # read on the side stream while the UNet goes on
                for tensor in total:
                    tensor.record_stream(main)  # made on the side stream, read by the UNet's blocks
                self._ready = (torch.cuda.Event(), x.device)
                self._ready[0].record(side)
        self._pending = total

    def _after_unet(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._pending = None
        self._ready = None

    def _residuals_ready(self) -> None:
        """Make the UNet's stream wait for the side-stream CapFace pass (GPU-side, no host sync)."""
        if self._ready is not None:
            event, device = self._ready
            torch.cuda.current_stream(device).wait_event(event)
            self._ready = None

    def _after_middle(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if self._pending is None:
            return None
        self._residuals_ready()
        return output + self._pending[-1].to(output.dtype)

    def _skip_adder(self, index: int):
        def add_to_skip(module: nn.Module, args: tuple) -> tuple | None:
            if self._pending is None:
                return None
            self._residuals_ready()
            h = args[0]
            residual = self._pending[len(self._pending) - 2 - index]
            channels = residual.shape[1]
            if h.shape[1] <= channels or h.shape[-2:] != residual.shape[-2:]:
                raise IncompatibleUNetError(f"CapHuman residual {tuple(residual.shape)} does not fit output block "
                                            f"{index} input {tuple(h.shape)}")
            if torch.is_grad_enabled():
                h = torch.cat([h[:, :-channels], h[:, -channels:] + residual.to(h.dtype)], dim=1)
            else:
                h[:, -channels:] += residual.to(h.dtype)
            return (h, *args[1:])

        return add_to_skip


def hook_unet(unet: nn.Module, controls: Sequence[CapFaceControl], row_sources: Sequence[int] | None = None,
              cuda_graphs: bool = True, overlap: bool = True) -> UNetHook:
    """`with hook_unet(unet, controls): ...` — CapFace residuals are added to every UNet call inside the block."""
    return UNetHook(unet, controls, row_sources, cuda_graphs, overlap)
