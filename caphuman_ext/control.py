"""One CapHuman identity as a control: CapFace + hint + identity context + strength + pose-only phase."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .capface import CapFace
from .graphs import version_of as _version_of


def version_of(tensor: torch.Tensor) -> int | None:
    """A tensor's in-place modification counter, None when it has none (inference tensors)."""
    version = _version_of(tensor)
    return version if isinstance(version, int) else None


def hard_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The reference's `resize(mask, size) > 0.5`: bilinear, no antialias (torchvision 0.14 tensors), as 0/1."""
    dtype = mask.dtype
    mask = mask.float()
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False, antialias=False)
    return (mask > 0.5).to(dtype)


@dataclass
class _HintCache:
    key: tuple
    features: torch.Tensor
    mask: torch.Tensor
    hard_masks: dict = field(default_factory=dict)

    def hard_mask(self, size: tuple[int, int]) -> torch.Tensor:
        if size not in self.hard_masks:
            self.hard_masks[size] = hard_mask(self.mask, size)
        return self.hard_masks[size]


class CapFaceControl:
    """What one identity contributes to a generation.

    hint: (1 or N, 9, 8h, 8w) rendered `cat([normal, albedo, shading])`; context: (1 or N, 258, context_dim) from
    `CapFace.identity_context`; strength scales the residuals; rows whose timestep exceeds `drop_identity_above_t`
    (the reference's tau; 0 = off) see a zero identity context; `identity_on = False` zeroes it for every row (the
    webui's pose-only phase, counted in steps). `active = False` skips the unit entirely. `applied_calls` counts the
    UNet passes that received this control's residuals.
    """

    def __init__(self, capface: CapFace, hint: torch.Tensor, context: torch.Tensor, strength: float = 1.0,
                 drop_identity_above_t: float = 0.0) -> None:
        self.capface = capface
        self._hint_cache: _HintCache | None = None
        self._context_cache: tuple | None = None  # (source, its version, dtype, converted)
        self.hint = hint
        self.context = context
        self.strength = float(strength)
        self.drop_identity_above_t = float(drop_identity_above_t)
        self.active = True
        self.identity_on = True
        self.applied_calls = 0

    @property
    def hint(self) -> torch.Tensor:
        return self._hint

    @hint.setter
    def hint(self, value: torch.Tensor) -> None:
        self._hint = value
        self._hint_cache = None

    @property
    def context(self) -> torch.Tensor:
        return self._context

    @context.setter
    def context(self, value: torch.Tensor) -> None:
        if getattr(self, "_context", None) is not value:
            self._context = value
            self._context_cache = None

    @property
    def enabled(self) -> bool:
        """Whether this control does any work at all this step."""
        return self.active and self.strength != 0.0

    def _hint_state(self, device: torch.device, dtype: torch.dtype) -> _HintCache:
        """Hint features and head mask, computed once per hint (they depend on nothing else).

        Assign a new tensor to `hint` (or modify it in place) and they are computed again.
        """
        key = (version_of(self.hint), device, dtype)
        cache = self._hint_cache
        if cache is None or cache.key != key or key[0] is None:
            with torch.no_grad():
                features, mask = self.capface.hint_features(self.hint.to(device, dtype))
            cache = self._hint_cache = _HintCache(key, features, mask)
        return cache

    def prepare(self, latent: torch.Tensor) -> list[torch.Tensor]:
        """Compute the per-hint tensors now (hint features, hard masks at every level of this latent size, the
        context on the device in CapFace's dtype), so that a CUDA graph capture only records per-step work.

        Returns them as the inputs a captured pass reads: `[features, context, mask per level...]`.
        """
        dtype = self.capface.dtype
        cache = self._hint_state(latent.device, dtype)
        height, width = latent.shape[-2:]
        masks = []
        for _ in range(len(self.capface.config.channel_mult)):
            masks.append(cache.hard_mask((height, width)))
            height, width = (height + 1) // 2, (width + 1) // 2
        return [cache.features, self._context_on(latent.device, dtype), *masks]

    def _context_on(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The context on `device` in `dtype`, converted once per context (and per in-place change of it)."""
        if self._context.device != device:
            self.context = self._context.to(device)
        source, version = self._context, version_of(self._context)
        cached = self._context_cache
        if cached is None or cached[0] is not source or cached[1] != version or version is None \
                or cached[2] != dtype:
            cached = self._context_cache = (source, version, dtype, source.to(dtype))
        return cached[3]

    def check_latent(self, latent: torch.Tensor) -> None:
        """Raise a readable error when the UNet samples a latent this control's hint was not made for (a tiled
        sampler calling the UNet on tiles, or an extension that resized the latent)."""
        expected = tuple(s // 8 for s in self.hint.shape[-2:])
        if tuple(latent.shape[-2:]) != expected:
            raise ValueError(
                f"CapHuman: the UNet is called on a {tuple(latent.shape[-2:])} latent, but this sampling pass is "
                f"{expected} (hint {tuple(self.hint.shape[-2:])} pixels). Tiled sampling (Tiled Diffusion / "
                "MultiDiffusion) or another extension changed the latent size: disable it or the CapHuman unit.")

    def graph_key(self, weights: Hashable = None) -> tuple:
        """What a captured CapFace pass of this control has baked in besides shapes and its static inputs (the
        tensors `prepare` returns): CapFace's weights (`weights`: their addresses, see `weights_key`), strength,
        tau and the pose-only phase. Hint, masks and context are not part of it: a graph copies them in."""
        return (weights if weights is not None else id(self.capface), self.strength, self.drop_identity_above_t,
                self.identity_on)

    def identity(self, timesteps: torch.Tensor, dtype: torch.dtype, rows: torch.Tensor | None = None,
                 context: torch.Tensor | None = None) -> torch.Tensor:
        """Identity context per row, zeroed where t > tau (the reference's `drop_control_cond_t`)."""
        context = self.context if context is None else context
        context = _rows(context.to(timesteps.device, dtype), rows, timesteps.shape[0])
        if not self.identity_on:
            return torch.zeros_like(context)
        if self.drop_identity_above_t == 0.0:
            return context
        keep = (timesteps <= self.drop_identity_above_t).to(dtype)[:, None, None]
        return context * keep

    def residuals(self, x: torch.Tensor, timesteps: torch.Tensor, rows: torch.Tensor | None = None,
                  inputs: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The 13 residuals for latent rows `x`, scaled by strength and multiplied by the hard head mask.

        rows: which rows of a per-row hint/context belong to `x` (None: all of them, in order).
        inputs: the tensors `prepare` returned (or copies of them: a captured graph's static buffers), read
        instead of this control's own state.
        """
        features, context, masks = self.conditioning(x, timesteps, rows, inputs)
        return self.finish(self.capface.residuals(x, timesteps, context, features), masks, rows, x.shape[0])

    def conditioning(self, x: torch.Tensor, timesteps: torch.Tensor, rows: torch.Tensor | None = None,
                     inputs: list[torch.Tensor] | None = None):
        """(hint features per row, identity context per row, mask lookup by size) for latent rows `x`."""
        dtype = self.capface.dtype
        if inputs is None:
            cache = self._hint_state(x.device, dtype)
            features, context, masks = cache.features, None, cache.hard_mask
        else:
            features, context, levels = inputs[0], inputs[1], inputs[2:]
            by_size = {tuple(mask.shape[-2:]): mask for mask in levels}

            def masks(size: tuple[int, int]) -> torch.Tensor:
                return by_size[size]
        features = _rows(features, rows, x.shape[0])
        context = self.identity(timesteps, dtype, rows, context)
        if tuple(features.shape[-2:]) != tuple(x.shape[-2:]):
            raise ValueError(f"CapHuman hint is {tuple(self.hint.shape[-2:])} pixels but the latent is "
                             f"{tuple(x.shape[-2:])}: render the hint at 8x the latent size")
        return features, context, masks

    def finish(self, outs: list[torch.Tensor], masks, rows: torch.Tensor | None, count: int) -> list[torch.Tensor]:
        """Raw CapFace outputs scaled by strength and multiplied by the hard head mask."""
        masked = []
        for out in outs:
            if self.strength != 1.0:
                out = out * self.strength
            mask = _rows(masks(tuple(out.shape[-2:])), rows, count)
            masked.append(out * mask)
        return masked


def summed_residuals(controls: list[CapFaceControl], x: torch.Tensor, timesteps: torch.Tensor,
                     rows: torch.Tensor | None = None,
                     inputs: list[list[torch.Tensor] | None] | None = None) -> list[torch.Tensor]:
    """The sum of several controls' residuals. Controls on the same CapFace run as ONE pass over their rows stacked
    (rows are independent in CapFace), so two units cost one wider pass instead of two narrow ones."""
    inputs = inputs if inputs is not None else [None] * len(controls)
    groups: dict[int, list[int]] = {}
    for index, control in enumerate(controls):
        groups.setdefault(id(control.capface), []).append(index)
    total: list[torch.Tensor] | None = None
    count = x.shape[0]
    for members in groups.values():
        if len(members) == 1:
            index = members[0]
            outs = controls[index].residuals(x, timesteps, rows, inputs[index])
        else:
            parts = [controls[i].conditioning(x, timesteps, rows, inputs[i]) for i in members]
            capface = controls[members[0]].capface
            stacked = capface.residuals(x.repeat(len(members), *([1] * (x.dim() - 1))),
                                        timesteps.repeat(len(members)), torch.cat([p[1] for p in parts]),
                                        torch.cat([p[0] for p in parts]))
            outs = None
            for slot, (i, part) in enumerate(zip(members, parts, strict=True)):
                own = controls[i].finish([out[slot * count:(slot + 1) * count] for out in stacked], part[2], rows,
                                         count)
                outs = own if outs is None else [a + b for a, b in zip(outs, own, strict=True)]
        total = outs if total is None else [a + b for a, b in zip(total, outs, strict=True)]
    return total


def weights_key(module: torch.nn.Module) -> tuple:
    """The addresses of a module's weights: a captured graph read them there, so it is valid while they stay."""
    return (id(module), *(tensor.data_ptr() for tensor in module.parameters()),
            *(tensor.data_ptr() for tensor in module.buffers()))


def _rows(tensor: torch.Tensor, rows: torch.Tensor | None, count: int) -> torch.Tensor:
    """Broadcast a batch-1 tensor to `count` rows, or pick `rows` of a per-row tensor."""
    if tensor.shape[0] == 1:
        return tensor.expand(count, *tensor.shape[1:])
    if rows is not None:
        return tensor.index_select(0, rows)
    if tensor.shape[0] != count:
        raise ValueError(f"CapHuman conditioning has {tensor.shape[0]} rows but the UNet batch has {count}")
    return tensor
