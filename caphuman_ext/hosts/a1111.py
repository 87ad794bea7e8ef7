"""AUTOMATIC1111 v1.10 adapter: the residual engine reaches the UNet through module hooks (`hook.UNetHook`).

The webui samples `shared.sd_model.model.diffusion_model` (it follows the refiner and a hires checkpoint). Hooks are
installed when a sampling starts and removed when `p.sample` ends, however it ends. The step's CFG row layout is read
from the conditioning the sampler holds. The lifecycle itself is `caphuman_ext.lifecycle.job`.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ..hook import UNetHook
from ..lifecycle.generation import CapHumanError, Generation
from ..rows import RowPlan

_HOOKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Generation -> UNetHook
_FAILURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Generation -> pre-hook handle


class A1111Host:
    """`lifecycle.host.Host` for AUTOMATIC1111 v1.10."""

    name = "AUTOMATIC1111"

    def sampled_model(self, p, denoiser=None):
        """`p.sd_model` follows `shared.sd_model`: the refiner after its switch, the hires checkpoint."""
        from modules import shared

        return shared.sd_model if shared.sd_model is not None else p.sd_model

    def unet(self, model) -> nn.Module:
        return model.model.diffusion_model

    def attached(self, generation: Generation, model) -> bool:
        hook = _HOOKS.get(generation)
        return hook is not None and hook.installed and hook.unet is self.unet(model)

    def attach(self, generation: Generation, model) -> None:
        unet = self.unet(model)
        hook = _HOOKS.get(generation)
        if hook is not None and hook.unet is not unet:
            hook.remove()
            hook = None
        if hook is None:
            hook = _HOOKS[generation] = UNetHook(unet, generation.engine)
        hook.install()

    def detach(self, generation: Generation, final: bool = False) -> None:
        hook = _HOOKS.pop(generation, None) if final else _HOOKS.get(generation)
        if hook is not None:
            hook.detach()
        handle = _FAILURES.pop(generation, None)
        if handle is not None:
            handle.remove()

    def fail(self, generation: Generation, model) -> None:
        """The UNet's next call raises the error, once (the webui swallows it from callbacks)."""
        self.detach(generation)
        unet = self.unet(model)

        def stop(module: nn.Module, args: tuple) -> None:
            handle = _FAILURES.pop(generation, None)
            if handle is not None:
                handle.remove()
            raise CapHumanError(generation.error)

        _FAILURES[generation] = unet.register_forward_pre_hook(stop)

    def step_rows(self, params) -> RowPlan | None:
        """The CFG row layout of this step, from the conditioning the sampler holds (`MulticondLearnedConditioning`:
        one list of sub-prompts per image); None when the batch is not laid out that way."""
        denoiser = params.denoiser
        extra = getattr(getattr(denoiser, "sampler", None), "sampler_extra_args", None) or {}
        batch = getattr(extra.get("cond"), "batch", None)
        if not batch:
            return None
        repeats = [len(prompts) for prompts in batch]
        rows, images = params.x.shape[0], len(repeats)
        for extra_sets in (0, 1):  # instruct-pix2pix adds a second set of uncond rows
            if rows == sum(repeats) + images * (1 + extra_sets):
                return RowPlan.cfg(repeats, images, extra_sets, step=getattr(denoiser, "step", 0))
        return None

    def adopt(self, hint: torch.Tensor) -> torch.Tensor:
        return hint

    def low_vram(self) -> bool:
        from modules import shared

        options = getattr(shared, "cmd_opts", None)
        return bool(getattr(options, "lowvram", False) or getattr(options, "medvram", False))


HOST = A1111Host()


def hook_of(generation: Generation) -> UNetHook | None:
    """The hook that carries `generation`'s residuals now (tests and diagnostics)."""
    return _HOOKS.get(generation)


__all__ = ["HOST", "A1111Host", "hook_of"]
