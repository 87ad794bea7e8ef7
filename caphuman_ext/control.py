"""One CapHuman identity as a control: CapFace + hint + identity context + strength + pose-only phase."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .capface import CapFace


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
        self._generation = 0  # bumped whenever hint or context is replaced (captured graphs depend on them)
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
        self._generation += 1

    @property
    def context(self) -> torch.Tensor:
        return self._context

    @context.setter
    def context(self, value: torch.Tensor) -> None:
        if getattr(self, "_context", None) is not value:
            self._context = value
            self._generation += 1

    @property
    def enabled(self) -> bool:
        """Whether this control does any work at all this step."""
        return self.active and self.strength != 0.0

    def _hint_state(self, device: torch.device, dtype: torch.dtype) -> _HintCache:
        """Hint features and head mask, computed once per hint (they depend on nothing else).

        Assign a new tensor to `hint` (or modify it in place) and they are computed again.
        """
        key = (self.hint._version, device, dtype)
        cache = self._hint_cache
        if cache is None or cache.key != key:
            with torch.no_grad():
                features, mask = self.capface.hint_features(self.hint.to(device, dtype))
            cache = self._hint_cache = _HintCache(key, features, mask)
        return cache

    def prepare(self, latent: torch.Tensor) -> None:
        """Compute the per-hint tensors now (hint features, hard masks at every level of this latent size), so that
        a CUDA graph capture only records per-step work."""
        cache = self._hint_state(latent.device, self.capface.dtype)
        height, width = latent.shape[-2:]
        for _ in range(len(self.capface.config.channel_mult)):
            cache.hard_mask((height, width))
            height, width = (height + 1) // 2, (width + 1) // 2
        self.context = self.context.to(latent.device)

    def check_latent(self, latent: torch.Tensor) -> None:
        """Raise a readable error when the UNet samples a latent this control's hint was not made for (a tiled
        sampler calling the UNet on tiles, or an extension that resized the latent)."""
        expected = tuple(s // 8 for s in self.hint.shape[-2:])
        if tuple(latent.shape[-2:]) != expected:
            raise ValueError(
                f"CapHuman: the UNet is called on a {tuple(latent.shape[-2:])} latent, but this sampling pass is "
                f"{expected} (hint {tuple(self.hint.shape[-2:])} pixels). Tiled sampling (Tiled Diffusion / "
                "MultiDiffusion) or another extension changed the latent size: disable it or the CapHuman unit.")

    def graph_key(self) -> tuple:
        """What a captured CapFace pass of this control depends on besides shapes."""
        return (id(self), id(self.capface), self.strength, self.drop_identity_above_t, self.identity_on,
                self._generation,
                self._hint_cache.key if self._hint_cache else None, self.context._version)

    def identity(self, timesteps: torch.Tensor, dtype: torch.dtype,
                 rows: torch.Tensor | None = None) -> torch.Tensor:
        """Identity context per row, zeroed where t > tau (the reference's `drop_control_cond_t`)."""
        context = _rows(self.context.to(timesteps.device, dtype), rows, timesteps.shape[0])
        if not self.identity_on:
            return torch.zeros_like(context)
        if self.drop_identity_above_t == 0.0:
            return context
        keep = (timesteps <= self.drop_identity_above_t).to(dtype)[:, None, None]
        return context * keep

    def residuals(self, x: torch.Tensor, timesteps: torch.Tensor,
                  rows: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The 13 residuals for latent rows `x`, scaled by strength and multiplied by the hard head mask.

        rows: which rows of a per-row hint/context belong to `x` (None: all of them, in order).
        """
        dtype = self.capface.dtype
        cache = self._hint_state(x.device, dtype)
        features = _rows(cache.features, rows, x.shape[0])
        context = self.identity(timesteps, dtype, rows)
        if tuple(features.shape[-2:]) != tuple(x.shape[-2:]):
            raise ValueError(f"CapHuman hint is {tuple(self.hint.shape[-2:])} pixels but the latent is "
                             f"{tuple(x.shape[-2:])}: render the hint at 8x the latent size")
        outs = self.capface.residuals(x, timesteps, context, features)
        masked = []
        for out in outs:
            if self.strength != 1.0:
                out = out * self.strength
            mask = _rows(cache.hard_mask(tuple(out.shape[-2:])), rows, x.shape[0])
            masked.append(out * mask)
        return masked


def _rows(tensor: torch.Tensor, rows: torch.Tensor | None, count: int) -> torch.Tensor:
    """Broadcast a batch-1 tensor to `count` rows, or pick `rows` of a per-row tensor."""
    if tensor.shape[0] == 1:
        return tensor.expand(count, *tensor.shape[1:])
    if rows is not None:
        return tensor.index_select(0, rows)
    if tensor.shape[0] != count:
        raise ValueError(f"CapHuman conditioning has {tensor.shape[0]} rows but the UNet batch has {count}")
    return tensor
