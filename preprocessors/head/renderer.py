"""The three maps of CapHuman's hint, as DECA's SRenderY renders them: interpolated world-space vertex normals,
UV albedo, and albedo × spherical-harmonics shading; all × the head's coverage, background 0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .mesh import HeadTemplate, face_vertices, vertex_normals
from .rasterizer import Fragments, interpolate, rasterize

DEPTH_OFFSET = 10.0  # SRenderY moves the mesh in front of the camera before rasterizing


def sh_constant_factors() -> torch.Tensor:
    """DECA's 9 constant factors of the order-2 spherical-harmonics lighting."""
    pi = np.pi
    c1 = (2 * pi / 3) * np.sqrt(3 / (4 * pi))
    c2 = (pi / 4) * 3 * np.sqrt(5 / (12 * pi))
    return torch.tensor([1 / np.sqrt(4 * pi), c1, c1, c1, c2, c2, c2, (pi / 4) * (3 / 2) * np.sqrt(5 / (12 * pi)),
                         (pi / 4) * (1 / 2) * np.sqrt(5 / (4 * pi))]).float()


def sh_shading(normals: torch.Tensor, light: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normals, (B, 9, 3) SH coefficients -> (B, 3, H, W) shading."""
    nx, ny, nz = normals[:, 0], normals[:, 1], normals[:, 2]
    basis = torch.stack([torch.ones_like(nx), nx, ny, nz, nx * ny, nx * nz, ny * nz, nx ** 2 - ny ** 2,
                         3 * nz ** 2 - 1], 1) * factors[None, :, None, None]
    return (light[:, :, :, None, None] * basis[:, :, None]).sum(1)


@dataclass
class HeadMaps:
    normal: torch.Tensor  # (B, 3, H, W) in -1..1, 0 off the head
    albedo: torch.Tensor  # (B, 3, H, W)
    shading: torch.Tensor  # (B, 3, H, W) albedo × SH shading (the reference's "rendered_images")
    alpha: torch.Tensor  # (B, 1, H, W) head coverage

    def hint(self) -> torch.Tensor:
        """CapHuman's 9-channel hint: cat([normal, albedo, shading])."""
        return torch.cat([self.normal, self.albedo, self.shading], 1)


class HeadRenderer(nn.Module):
    """Renders FLAME meshes with the head template's UVs."""

    def __init__(self, template: HeadTemplate) -> None:
        super().__init__()
        self.register_buffer("faces", template.faces)
        self.vertices_needed = int(template.faces.max()) + 1 if template.faces.numel() else 0
        uv = torch.cat([template.uv_coords, torch.ones_like(template.uv_coords[:, :1])], -1) * 2 - 1
        uv[:, 1] = -uv[:, 1]
        self.register_buffer("face_uv", uv[template.uv_faces])  # (F, 3, 3)
        self.register_buffer("sh_factors", sh_constant_factors())

    def rasterize(self, projected: torch.Tensor, height: int, width: int) -> Fragments:
        moved = projected.clone()
        moved[..., 2] = moved[..., 2] + DEPTH_OFFSET
        return rasterize(moved, self.faces, height, width)

    def forward(self, vertices: torch.Tensor, projected: torch.Tensor, albedo_uv: torch.Tensor,
                light: torch.Tensor, height: int, width: int) -> HeadMaps:
        """vertices: (B, V, 3) FLAME space (for normals); projected: (B, V, 3) image-normalised x, y (y down);
        albedo_uv: (B, 3, S, S); light: (B, 9, 3)."""
        batch = vertices.shape[0]
        if vertices.shape[1] < self.vertices_needed:
            raise ValueError(f"head_template.obj indexes {self.vertices_needed} vertices; the FLAME mesh has "
                             f"{vertices.shape[1]}: the template does not belong to this FLAME model")
        for name, value in (("vertices", vertices), ("albedo", albedo_uv), ("light", light)):
            if not torch.isfinite(value).all():
                raise ValueError(f"the head's {name} hold NaN or infinite values (damaged model files or codes)")
        normals = vertex_normals(vertices, self.faces)
        attributes = torch.cat([self.face_uv[None].expand(batch, -1, -1, -1), face_vertices(normals, self.faces)], -1)
        fragments = self.rasterize(projected, height, width)
        values = interpolate(fragments, attributes)
        alpha = (fragments.pix_to_face >= 0).to(values.dtype)[:, None]
        grid = values[:, :2].permute(0, 2, 3, 1)
        albedo = F.grid_sample(albedo_uv, grid, align_corners=False)
        normal = values[:, 3:6]
        shading = albedo * sh_shading(normal, light, self.sh_factors)
        return HeadMaps(normal * alpha, albedo * alpha, shading * alpha, alpha)
