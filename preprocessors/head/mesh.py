"""Mesh helpers: the head template's OBJ (faces + UVs), per-face gathering and DECA's vertex normals."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from safe_files.head_limits import MAX_FACES, MAX_UVS, MAX_VERTICES, HeadFileError, within


@dataclass
class HeadTemplate:
    faces: torch.Tensor  # (F, 3) vertex indices
    uv_coords: torch.Tensor  # (T, 2) texture coordinates in 0..1 (OBJ `vt`)
    uv_faces: torch.Tensor  # (F, 3) texture-coordinate indices


MAX_OBJ_BYTES = 64 << 20  # DECA's head_template.obj is ~ 1 MB


def _index(token: str, count: int, what: str, name: str, line: int) -> int:
    try:
        value = int(token)
    except ValueError:
        raise HeadFileError(f"{name}, line {line}: '{token}' is not a {what} index") from None
    if not 1 <= value <= count:
        raise HeadFileError(f"{name}, line {line}: {what} index {value} outside 1..{count} (defined so far)")
    return value - 1


def load_obj(path: str | Path) -> HeadTemplate:
    """Triangles and UVs of an OBJ (`v`, `vt`, `f a/ta[/na] ...`); polygons are fanned into triangles.

    Counts, indices (1-based, referring to `v`/`vt` lines before them) and finite UVs are checked as it is read;
    a damaged or hostile file raises HeadFileError naming the line.
    """
    path = Path(path)
    name = path.name
    if path.stat().st_size > MAX_OBJ_BYTES:
        raise HeadFileError(f"{name}: {path.stat().st_size} bytes, more than a head template holds")
    uvs, faces, uv_faces = [], [], []
    vertex_count = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "v":
                vertex_count = within(name, "vertices", vertex_count + 1, 0, MAX_VERTICES)
            elif parts[0] == "vt":
                try:
                    uv = [float(parts[1]), float(parts[2])]
                except (IndexError, ValueError):
                    raise HeadFileError(f"{name}, line {number}: malformed texture coordinate") from None
                if not all(math.isfinite(v) for v in uv):
                    raise HeadFileError(f"{name}, line {number}: texture coordinate {uv} is not finite")
                uvs.append(uv)
                within(name, "texture coordinates", len(uvs), 0, MAX_UVS)
            elif parts[0] == "f":
                corners = [p.split("/") for p in parts[1:]]
                if len(corners) < 3:
                    raise HeadFileError(f"{name}, line {number}: a face needs at least 3 corners")
                vertex = [_index(c[0], vertex_count, "vertex", name, number) for c in corners]
                texture = [_index(c[1] if len(c) > 1 and c[1] else c[0], len(uvs), "texture", name, number)
                           for c in corners]
                for i in range(1, len(corners) - 1):
                    faces.append([vertex[0], vertex[i], vertex[i + 1]])
                    uv_faces.append([texture[0], texture[i], texture[i + 1]])
                within(name, "triangles", len(faces), 0, MAX_FACES)
    if not faces or not uvs:
        raise HeadFileError(f"{name}: expected an OBJ with faces and texture coordinates (vt)")
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
