"""Inject CapFace residuals into the webui's ldm UNet through PyTorch module hooks.

A pre-hook on the UNet reads the latent and timesteps and computes every control's masked, scaled residuals; a
pre-hook on `input_blocks[0]` arms the pass whose input is that latent; a hook on `middle_block` adds the last
residual to its output; pre-hooks on `output_blocks[i]` add residual `11 - i` to the skip half of their concatenated
input. Code that replaces `UNetModel.forward` (sd-webui-controlnet does) still calls these blocks as modules, so both
controls apply; an extra pass that code runs through the same blocks on another latent (ControlNet's reference-only
pass) is not armed and gets nothing.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .control import CapFaceControl, summed_residuals, weights_key
from .graphs import GraphCache

if TYPE_CHECKING:
    from .lifecycle.rows import RowPlan

log = logging.getLogger(__name__)
FLOAT8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                                         "float8_e5m2fnuz") if hasattr(torch, name))


_INDEX_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (row sources, device) -> gather indices
_INDEX_CACHE_SIZE = 64


class IncompatibleUNetError(ValueError):
    """The loaded model is not an SD1.x-shaped UNet that CapFace can feed."""


def _describe_unet(unet: nn.Module) -> str:
    channels, mult = getattr(unet, "model_channels", "?"), list(getattr(unet, "channel_mult", []))
    kind = "an SD1.x UNet" if channels == 320 and mult == [1, 2, 4, 4] and \
        getattr(unet, "context_dim", 768) in (768, None) else "not an SD1.x UNet"
    return f"{channels} channels x {mult}, {len(getattr(unet, 'output_blocks', []))} output blocks: {kind}"


def cross_attention_width(unet: nn.Module) -> int | None:
    """The width of the text context the UNet's cross-attention reads (SD1.x: 768, SD2: 1024, SDXL: 2048)."""
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_k") and hasattr(module, "in_features"):
            return int(module.in_features)
    return None


def check_compatible(unet: nn.Module, controls: Sequence[CapFaceControl] | Sequence[object]) -> None:
    """Raise IncompatibleUNetError naming both shapes when a CapFace cannot feed `unet` (controls or CapFaces)."""
    for name in ("input_blocks", "middle_block", "output_blocks"):
        if not hasattr(unet, name):
            raise IncompatibleUNetError(f"CapHuman needs an ldm UNetModel; {type(unet).__name__} has no {name}")
    blocks = len(unet.output_blocks)
    for control in controls:
        capface = getattr(control, "capface", control)
        config = capface.config
        if capface.num_residuals != blocks + 1 or getattr(unet, "model_channels", None) != \
                config.model_channels or tuple(getattr(unet, "channel_mult", ())) != tuple(config.channel_mult):
            sd1_unet = getattr(unet, "model_channels", None) == 320
            advice = ("this CapHuman file was made for another base model: use the CapHuman file of SD1.5"
                      if sd1_unet else "load an SD1.x checkpoint (SD1.5 or a fine-tune of it)")
            raise IncompatibleUNetError(
                f"the CapFace ({config.model_channels} channels x {list(config.channel_mult)}, "
                f"{capface.num_residuals - 1} blocks) does not fit the loaded checkpoint's UNet "
                f"({_describe_unet(unet)}): {advice}")
        width = cross_attention_width(unet)
        if width is not None and width != config.context_dim:
            raise IncompatibleUNetError(
                f"the loaded checkpoint's UNet reads a {width}-wide text context, CapFace was trained beside one "
                f"that reads {config.context_dim} (SD1.x): load an SD1.x checkpoint (SD1.5 or a fine-tune of it)")


def compute_dtype(unet_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype CapFace computes in: the UNet's, except storage-only float8 (the webui's "FP8 weight" setting),
    where it is the autocast dtype (CUDA: float16 by default) or float32 on the CPU."""
    if unet_dtype not in FLOAT8_DTYPES:
        return unet_dtype
    if device.type == "cuda":
        return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.float16
    return torch.float32


def _same_input(h: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether `input_blocks[0]` received the latent the UNet was called with (`h = x.type(unet.dtype)`)."""
    if h is x:
        return True
    if h.shape != x.shape:
        return False
    return h.data_ptr() == x.data_ptr() or h.dtype != x.dtype


def _fit(residual: torch.Tensor, target: torch.Tensor, where: str, warned: set) -> torch.Tensor:
    """A residual at the spatial size of the tensor it joins (Kohya Deep Shrink makes some skips smaller)."""
    if residual.shape[-2:] == target.shape[-2:]:
        return residual
    if residual.shape[0] != target.shape[0]:
        raise IncompatibleUNetError(f"CapHuman residual {tuple(residual.shape)} does not fit {where} "
                                    f"{tuple(target.shape)}")
    if where not in warned:
        warned.add(where)
        log.warning("CapHuman: %s is %s, its residual %s: resized (another extension scales the UNet's features)",
                    where, tuple(target.shape[-2:]), tuple(residual.shape[-2:]))
    return F.interpolate(residual, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)


def _autocast_state() -> tuple:
    if not torch.is_autocast_enabled():
        return (False,)
    get_dtype = getattr(torch, "get_autocast_dtype", None)
    return (True, get_dtype("cuda") if get_dtype else torch.get_autocast_gpu_dtype())


class UNetHook:
    """Context manager that keeps CapFace hooks on a UNet exactly while it is open.

    row_sources: optional, per UNet call: for each latent row, a key; rows sharing a key share one CapFace pass
    (they must have the same latent, timestep, hint and identity, as the webui's cond/uncond rows do).
    row_plan: optional `RowPlan` of the current sampling step, set by the host adapter each step; it replaces
    `row_sources`: each UNet call takes its rows from it, and calls of one step share CapFace work.
    cuda_graphs: on CUDA, capture the CapFace pass once per shape/layout and replay it each step.
    graphs: the `GraphCache` to use instead of one of its own (`graphs.shared_graphs()`: kept across hooks, so a
    later generation replays what an earlier one captured); not cleared by `remove()`.
    overlap: on CUDA, run the CapFace pass on a side stream, concurrently with the UNet's input blocks (its
    residuals are first needed after the middle block).
    """

    def __init__(self, unet: nn.Module, controls: Sequence[CapFaceControl],
                 row_sources: Sequence[int] | None = None, cuda_graphs: bool = True, overlap: bool = True,
                 graphs: GraphCache | None = None) -> None:
        check_compatible(unet, controls)
        self.unet = unet
        self.controls = list(controls)
        self.row_sources = row_sources
        self.row_plan: RowPlan | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._pending: list[torch.Tensor] | None = None
        self._latent: torch.Tensor | None = None  # what the UNet was called with; arms the pass that reads it
        self._armed = False
        self._active: list[CapFaceControl] = []
        self._step_result: tuple[RowPlan, tuple[int, ...], list[torch.Tensor]] | None = None
        self._warned: set[str] = set()
        self._signature = inspect.signature(type(unet).forward)
        self._owns_graphs = graphs is None
        self.graphs = (graphs if graphs is not None else GraphCache()) if cuda_graphs else None
        self._weights: dict[int, tuple] = {}  # per CapFace: `weights_key`, taken when installed or moved
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
        self._weights.clear()  # CapFace may have moved since (offload between samplings)
        try:
            self._handles.append(self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True))
            self._handles.append(self.unet.register_forward_hook(self._after_unet))
            self._handles.append(self.unet.input_blocks[0].register_forward_pre_hook(self._arm))
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
        self._pending = self._latent = self._step_result = None
        self._armed = False

    def remove(self) -> None:
        """Remove every hook and drop cached tensors and graphs; safe to call twice."""
        self.detach()
        self._weights.clear()
        if self.graphs is not None and self._owns_graphs:
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

    def _dedupe(self, sources: Sequence[int] | None, rows: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(representative rows, row -> representative position), or None when every row is distinct."""
        if sources is None or len(sources) != rows or len(set(sources)) == rows:
            return None
        key = (tuple(sources), device)
        if key not in _INDEX_CACHE:
            order = list(dict.fromkeys(sources))
            first = [list(sources).index(s) for s in order]
            inverse = [order.index(s) for s in sources]
            # kept for the process: a captured graph (kept across generations) reads these tensors
            _INDEX_CACHE[key] = (torch.tensor(first, device=device), torch.tensor(inverse, device=device))
            while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
                _INDEX_CACHE.pop(next(iter(_INDEX_CACHE)))
        return _INDEX_CACHE[key]

    def _rows_for_call(self, rows: int) -> Sequence[int] | None:
        if self.row_plan is not None:
            return self.row_plan.take(rows)
        return self.row_sources

    def _shared_with_earlier_call(self, sources: Sequence[int] | None) -> list[torch.Tensor] | None:
        """This step's residuals from an earlier call (A1111 runs cond and uncond as separate calls when
        `batch_cond_uncond` is off): the rows this call needs, if that call computed every image it needs."""
        earlier = self._step_result
        if sources is None or earlier is None or earlier[0] is not self.row_plan:
            return None
        _, computed, residuals = earlier
        if tuple(sources) == computed:
            return residuals
        if not set(sources) <= set(computed):
            return None
        index = torch.tensor([computed.index(s) for s in sources], device=residuals[0].device)
        return [r.index_select(0, index) for r in residuals]

    def _before_unet(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._pending = self._latent = None
        self._armed = False
        active = [c for c in self.controls if c.enabled]
        if not active:
            return
        x, timesteps = self._latent_and_timesteps(args, kwargs)
        if x is None or timesteps is None:
            return
        sources = self._rows_for_call(x.shape[0])
        if sources is not None and len(sources) != x.shape[0]:
            sources = None
        shared = self._shared_with_earlier_call(sources)
        if shared is not None:
            self._pending, self._latent, self._ready = shared, x, None
            self._active = active
            return
        dtype = compute_dtype(self._unet_dtype, x.device)
        for control in active:  # CapFace follows the UNet's device and dtype
            if control.capface.device != x.device or control.capface.dtype != dtype:
                control.capface.to(device=x.device, dtype=dtype)
                self._weights.pop(id(control.capface), None)
            control.check_latent(x)
        indices = self._dedupe(sources, x.shape[0], x.device)
        reps, inverse = indices if indices is not None else (None, None)

        def compute(x: torch.Tensor, timesteps: torch.Tensor,
                    inputs: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
            x_rows = x if reps is None else x.index_select(0, reps)
            t_rows = timesteps if reps is None else timesteps.index_select(0, reps)
            own = None if inputs is None else [list(inputs[bounds[i]:bounds[i + 1]]) for i in range(len(active))]
            total = summed_residuals(active, x_rows, t_rows, reps, own)
            if inverse is not None:
                total = [r.index_select(0, inverse) for r in total]
            return total

        with torch.no_grad():
            inputs: list[torch.Tensor] = []
            bounds = [0]
            if self.graphs is not None:
                for control in active:  # per-hint work stays outside the graph; the graph copies it in
                    inputs += control.prepare(x)
                    bounds.append(len(inputs))

            def run() -> list[torch.Tensor]:
                if self.graphs is None:
                    return compute(x, timesteps)
                key = (tuple(x.shape), x.dtype, timesteps.dtype, x.device, _autocast_state(),
                       None if reps is None else tuple(sources),
                       tuple(control.graph_key(self._weights_of(control.capface)) for control in active),
                       tuple((tuple(t.shape), t.dtype) for t in inputs))
                return self.graphs.run(key, compute, x, timesteps, inputs)

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
        self._pending, self._latent, self._active = total, x, active
        if sources is not None and self.row_plan is not None:
            self._step_result = (self.row_plan, tuple(sources), total)

    def _weights_of(self, capface: nn.Module) -> tuple:
        key = self._weights.get(id(capface))
        if key is None:
            key = self._weights[id(capface)] = weights_key(capface)
        return key

    def _arm(self, module: nn.Module, args: tuple) -> None:
        """Residuals go to the pass through the blocks that starts from the latent the UNet was called with."""
        self._armed = self._pending is not None and self._latent is not None and _same_input(args[0], self._latent)
        if self._armed:
            for control in self._active:
                control.applied_calls += 1

    def _after_unet(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._pending = self._latent = None
        self._armed = False
        self._ready = None

    def _residuals_ready(self) -> None:
        """Make the UNet's stream wait for the side-stream CapFace pass (GPU-side, no host sync)."""
        if self._ready is not None:
            event, device = self._ready
            torch.cuda.current_stream(device).wait_event(event)
            self._ready = None

    def _after_middle(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self._armed:
            return None
        self._residuals_ready()
        return output + _fit(self._pending[-1], output, "the middle block", self._warned).to(output.dtype)

    def _skip_adder(self, index: int):
        def add_to_skip(module: nn.Module, args: tuple) -> tuple | None:
            if not self._armed:
                return None
            self._residuals_ready()
            h = args[0]
            residual = self._pending[len(self._pending) - 2 - index]
            channels = residual.shape[1]
            if h.shape[1] <= channels:
                raise IncompatibleUNetError(f"CapHuman residual {tuple(residual.shape)} does not fit output block "
                                            f"{index} input {tuple(h.shape)}")
            residual = _fit(residual, h, f"output block {index}'s skip", self._warned)
            if torch.is_grad_enabled():
                h = torch.cat([h[:, :-channels], h[:, -channels:] + residual.to(h.dtype)], dim=1)
            else:
                h[:, -channels:] += residual.to(h.dtype)
            return (h, *args[1:])

        return add_to_skip


def hook_unet(unet: nn.Module, controls: Sequence[CapFaceControl], row_sources: Sequence[int] | None = None,
              cuda_graphs: bool = True, overlap: bool = True, graphs: GraphCache | None = None) -> UNetHook:
    """`with hook_unet(unet, controls): ...` — CapFace residuals are added to every UNet call inside the block."""
    return UNetHook(unet, controls, row_sources, cuda_graphs, overlap, graphs)
