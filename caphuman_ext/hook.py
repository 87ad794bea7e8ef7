"""Add CapFace residuals to an ldm UNet through PyTorch module hooks (how the AUTOMATIC1111 adapter attaches).

A pre-hook on the UNet reads the latent and timesteps and asks the `ResidualEngine` for the call's residuals; a
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

import torch
import torch.nn.functional as F
from torch import nn

from .compatibility import IncompatibleUNetError, check_compatible, cross_attention_width
from .control import CapFaceControl
from .engine import FLOAT8_DTYPES, Pending, ResidualEngine, compute_dtype
from .graphs import GraphCache
from .rows import RowPlan

log = logging.getLogger(__name__)


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


class UNetHook:
    """Context manager that keeps the engine's residuals flowing into a UNet exactly while it is open.

    `install()` / `detach()` add and remove the module hooks (the engine and its graphs stay for a later install);
    `remove()` also forgets the engine's per-sampling state.
    """

    def __init__(self, unet: nn.Module, engine: ResidualEngine) -> None:
        check_compatible(unet, engine.controls)
        self.unet = unet
        self.engine = engine
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._pending: Pending | None = None
        self._latent: torch.Tensor | None = None  # what the UNet was called with; arms the pass that reads it
        self._armed = False
        self._warned: set[str] = set()
        self._signature = inspect.signature(type(unet).forward)

    @property
    def controls(self) -> list[CapFaceControl]:
        return self.engine.controls

    @property
    def graphs(self) -> GraphCache | None:
        return self.engine.graphs

    # lifecycle -----------------------------------------------------------------------------------------------
    def __enter__(self) -> UNetHook:
        return self.install()

    def install(self) -> UNetHook:
        """Register the hooks (what entering the context does)."""
        if self._handles:
            return self
        self._unet_dtype = next(self.unet.parameters()).dtype
        self.engine.forget()  # CapFace may have moved since (offload between samplings)
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
        """Remove every hook but keep the engine (and its graphs) for a later `install()`."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pending = self._latent = None
        self._armed = False

    def remove(self) -> None:
        """Remove every hook and forget the engine's per-sampling state; safe to call twice."""
        self.detach()
        self.engine.forget()

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

    def _before_unet(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._pending = self._latent = None
        self._armed = False
        if not any(control.enabled for control in self.engine.controls):
            return
        x, timesteps = self._latent_and_timesteps(args, kwargs)
        if x is None or timesteps is None:
            return
        self._pending = self.engine.compute(x, timesteps, self._unet_dtype)
        self._latent = x if self._pending is not None else None

    def _arm(self, module: nn.Module, args: tuple) -> None:
        """Residuals go to the pass through the blocks that starts from the latent the UNet was called with."""
        self._armed = self._pending is not None and self._latent is not None and _same_input(args[0], self._latent)
        if self._armed:
            self._pending.delivered()

    def _after_unet(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._pending = self._latent = None
        self._armed = False

    def _after_middle(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not self._armed:
            return None
        self._pending.wait()
        return output + _fit(self._pending.middle, output, "the middle block", self._warned).to(output.dtype)

    def _skip_adder(self, index: int):
        def add_to_skip(module: nn.Module, args: tuple) -> tuple | None:
            if not self._armed:
                return None
            self._pending.wait()
            h = args[0]
            residual = self._pending.skip(index)
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


def hook_unet(unet: nn.Module, controls: Sequence[CapFaceControl], rows: RowPlan | None = None,
              cuda_graphs: bool = True, overlap: bool = True, graphs: GraphCache | None = None) -> UNetHook:
    """`with hook_unet(unet, controls): ...` — CapFace residuals are added to every UNet call inside the block.
    rows: the layout of every call (`RowPlan.fixed([0, 1, 0, 1])`: two images, cond then uncond) so that rows of
    one image share a CapFace pass; None: every row computed on its own."""
    return UNetHook(unet, ResidualEngine(controls, graphs, cuda_graphs, overlap, plan=rows))


__all__ = ["FLOAT8_DTYPES", "IncompatibleUNetError", "UNetHook", "check_compatible", "compute_dtype",
           "cross_attention_width", "hook_unet"]
