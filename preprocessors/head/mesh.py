"""Mesh helpers: the head template's OBJ (faces + UVs), per-face gathering and DECA's vertex normals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass
class HeadTemplate:
    faces: torch.Tensor  # (F, 3) vertex indices
    uv_coords: torch.Tensor  # (T, 2) texture coordinates in 0..1 (OBJ `vt`)
    uv_faces: torch.Tensor  # (F, 3) texture-coordinate indices


def load_obj(path: str | Path) -> HeadTemplate:
    """Triangles and UVs of an OBJ (`v`, `vt`, `f a/ta[/na] ...`); polygons are fanned into triangles."""
    uvs, faces, uv_faces = [], [], []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "vt":
                uvs.append([float(parts[1]), float(parts[2])])
            elif parts[0] == "f":
                corners = [p.split("/") for p in parts[1:]]
                vertex = [int(c[0]) - 1 for c in corners]
                texture = [int(c[1]) - 1 if len(c) > 1 and c[1] else int(c[0]) - 1 for c in corners]
                for i in range(1, len(corners) - 1):
                    faces.append([vertex[0], vertex[i], vertex[i + 1]])
                    uv_faces.append([texture[0], texture[i], texture[i + 1]])
    if not faces or not uvs:
        raise ValueError(f"{Path(path).name}: expected an OBJ with faces and texture coordinates (vt)")
    return HeadTemplate(torch.tensor(faces, dtype=torch.long), torch.tensor(uvs, dtype=torch.float32),
                        torch.tensor(uv_faces, dtype=torch.long))


def face_vertices(values: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, V, D) per-vertex values -> (B, F, 3, D) per face corner."""
    return values[:, faces]


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """DECA's area-weighted vertex normals (cross products accumulated per corner, then normalised)."""
    batch, count = vertices.shape[:2]
    corners = vertices[:, faces]  # (B, F, 3, 3)
    v0, v1, v2 = corners[:, :, 0], corners[:, :, 1], corners[:, :, 2]
    normals = torch.zeros_like(vertices)
    index = faces.unsqueeze(0).expand(batch, -1, -1)
    normals.scatter_add_(1, index[:, :, 1, None].expand(-1, -1, 3), torch.cross(v2 - v1, v0 - v1, dim=-1))
    normals.scatter_add_(1, index[:, :, 2, None].expand(-1, -1, 3), torch.cross(v0 - v2, v1 - v2, dim=-1))
    normals.scatter_add_(1, index[:, :, 0, None].expand(-1, -1, 3), torch.cross(v1 - v0, v2 - v0, dim=-1))
    return F.normalize(normals, eps=1e-6, dim=2)
