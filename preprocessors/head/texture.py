"""FLAME texture space (FLAME_texture.npz): mean + basis × tex code -> UV albedo map, as DECA's FLAMETex."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

N_TEX = 50
TEXTURE_SIZE = 512


class FlameTexture(nn.Module):
    """Albedo UV map (B, 3, uv_size, uv_size) in 0..1, RGB (the npz is BGR), nearest-resized as DECA does."""

    def __init__(self, mean: np.ndarray, basis: np.ndarray, n_tex: int = N_TEX, uv_size: int = 256) -> None:
        super().__init__()
        self.uv_size = uv_size
        self.register_buffer("mean", torch.from_numpy(np.asarray(mean, dtype=np.float32).reshape(1, -1) / 255.0))
        basis = np.asarray(basis, dtype=np.float32).reshape(-1, basis.shape[-1])[:, :n_tex] / 255.0
        self.register_buffer("basis", torch.from_numpy(np.ascontiguousarray(basis)))

    @classmethod
    def from_file(cls, path: str | Path, n_tex: int = N_TEX, uv_size: int = 256) -> FlameTexture:
        with np.load(path, allow_pickle=False) as space:
            return cls(space["mean"], space["tex_dir"][:, :n_tex], n_tex, uv_size)

    def forward(self, tex: torch.Tensor) -> torch.Tensor:
        texture = self.mean + tex @ self.basis.T
        texture = texture.reshape(tex.shape[0], TEXTURE_SIZE, TEXTURE_SIZE, 3).permute(0, 3, 1, 2)
        texture = F.interpolate(texture, [self.uv_size, self.uv_size])
        return texture[:, [2, 1, 0]]
