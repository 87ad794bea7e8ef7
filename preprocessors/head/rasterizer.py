"""A vectorised z-buffer rasterizer in pure PyTorch (CPU and GPU) with pytorch3d's `rasterize_meshes` conventions
as DECA uses them: one face per pixel, no blur, barycentrics in screen space (not perspective-correct).

Coordinates: x right and y down in [-1, 1] over the image (DECA's projected vertices); pixel (row i, column j) has
its centre at x = (2j + 1) / W - 1, y = (2i + 1) / H - 1; the face with the smallest z wins; a pixel is covered
when all three barycentrics are > 0; degenerate faces are skipped; back faces are kept.

Work is bounded by the image, whatever the mesh: every face is tested against the pixel centres of its bounding box
(clipped to the image), and the total of those pixel-face pairs is counted before any is evaluated; more than
`PAIRS_PER_PIXEL` per pixel is refused (a head mesh needs 0.5-8: two surfaces, triangles covering about half their
box). Non-finite vertices are refused too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPSILON = 1e-8  # pytorch3d's kEpsilon
PAIRS_PER_PIXEL = 32


class MeshTooComplexError(ValueError):
    """The mesh would need more pixel-triangle tests than the image allows (a damaged or hostile mesh)."""


def pair_budget(height: int, width: int) -> int:
    """The most pixel-face pairs one image of this size may evaluate."""
    return PAIRS_PER_PIXEL * height * width


@dataclass
class Fragments:
    pix_to_face: torch.Tensor  # (B, H, W) long, -1 where empty
    bary: torch.Tensor  # (B, H, W, 3)
    zbuf: torch.Tensor  # (B, H, W), -1 where empty
    pairs_evaluated: int = 0  # pixel-face pairs tested, over the batch (never above pair_budget per image)


def _edge(px, py, ax, ay, bx, by):
    return (px - ax) * (by - ay) - (py - ay) * (bx - ax)


def _rasterize_one(verts: torch.Tensor, faces: torch.Tensor, height: int, width: int,
                   max_pairs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    device = verts.device
    corners = verts[faces]  # (F, 3, 3)
    # pixel-space extent of every face: columns j with centre inside [xmin, xmax]
    px = (corners[..., 0] + 1) * width / 2 - 0.5
    py = (corners[..., 1] + 1) * height / 2 - 0.5
    x0 = px.min(1).values.ceil().clamp(0, width).long()
    x1 = px.max(1).values.floor().clamp(-1, width - 1).long()
    y0 = py.min(1).values.ceil().clamp(0, height).long()
    y1 = py.max(1).values.floor().clamp(-1, height - 1).long()
    area = _edge(corners[:, 2, 0], corners[:, 2, 1], corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0],
                 corners[:, 1, 1])
    box_w, box_h = (x1 - x0 + 1).clamp(min=0), (y1 - y0 + 1).clamp(min=0)
    valid = (box_w > 0) & (box_h > 0) & (area.abs() > EPSILON) & (corners[..., 2].max(1).values >= 0)
    face_ids = torch.nonzero(valid).squeeze(1)
    counts = (box_w * box_h)[face_ids]
    total = int(counts.sum().item()) if counts.numel() else 0
    if total > pair_budget(height, width):
        raise MeshTooComplexError(
            f"the head mesh needs {total} pixel-triangle tests at {width}x{height}, more than the "
            f"{pair_budget(height, width)} an image of that size allows ({PAIRS_PER_PIXEL} per pixel): "
            "head_template.obj or the FLAME files are damaged")
    evaluated = 0
    zbuf = torch.full((height * width,), float("inf"), device=device)
    best = torch.full((height * width,), -1, dtype=torch.long, device=device)
    bary = torch.zeros(height * width, 3, device=device)
    if face_ids.numel() == 0:
        return best.view(height, width), bary.view(height, width, 3), zbuf.view(height, width), 0
    # process faces in chunks whose candidate pixels fit in memory
    cumulative = torch.cumsum(counts, 0)
    start = 0
    while start < face_ids.numel():
        base = cumulative[start - 1] if start > 0 else cumulative.new_zeros(())
        stop = int(torch.searchsorted(cumulative, base + max_pairs, right=True).item())
        stop = max(stop, start + 1)
        ids, n = face_ids[start:stop], counts[start:stop]
        owner = torch.repeat_interleave(torch.arange(ids.numel(), device=device), n)
        offsets = torch.cumsum(n, 0) - n
        chunk = int(n.sum().item())
        evaluated += chunk
        local = torch.arange(chunk, device=device) - offsets[owner]
        face = ids[owner]
        col = x0[face] + local % box_w[face]
        row = y0[face] + torch.div(local, box_w[face], rounding_mode="floor")
        xf = (2 * col + 1).float() / width - 1
        yf = (2 * row + 1).float() / height - 1
        c = corners[face]
        ax, ay, bx, by, cx, cy = c[:, 0, 0], c[:, 0, 1], c[:, 1, 0], c[:, 1, 1], c[:, 2, 0], c[:, 2, 1]
        denom = area[face] + EPSILON
        w0 = _edge(xf, yf, bx, by, cx, cy) / denom
        w1 = _edge(xf, yf, cx, cy, ax, ay) / denom
        w2 = _edge(xf, yf, ax, ay, bx, by) / denom
        z = w0 * c[:, 0, 2] + w1 * c[:, 1, 2] + w2 * c[:, 2, 2]
        inside = (w0 > 0) & (w1 > 0) & (w2 > 0) & (z >= 0)
        pixel = (row * width + col)[inside]
        z, face = z[inside], face[inside]
        weights = torch.stack([w0, w1, w2], 1)[inside]
        # nearest z per pixel (ties: lowest face index), merged with earlier chunks
        candidate = torch.full_like(zbuf, float("inf")).scatter_reduce(0, pixel, z, "amin")
        nearest = torch.minimum(candidate, zbuf)
        hit = z == nearest[pixel]
        first = torch.full_like(best, torch.iinfo(torch.long).max).scatter_reduce(0, pixel[hit], face[hit], "amin")
        take = (first != torch.iinfo(torch.long).max) & (candidate < zbuf)
        chosen = hit & take[pixel] & (face == first[pixel])
        best[pixel[chosen]] = face[chosen]
        bary[pixel[chosen]] = weights[chosen]
        zbuf = torch.where(take, candidate, zbuf)
        start = stop
    empty = best < 0
    zbuf[empty] = -1
    return best.view(height, width), bary.view(height, width, 3), zbuf.view(height, width), evaluated


def rasterize(verts: torch.Tensor, faces: torch.Tensor, height: int, width: int,
              max_pairs: int = 4_000_000) -> Fragments:
    """Rasterize (B, V, 3) vertices (x, y in [-1, 1], y down; z = depth, nearer is smaller) of one topology.

    Raises ValueError for non-finite vertices and MeshTooComplexError past the image's pair budget."""
    if not torch.isfinite(verts).all():
        raise ValueError("the head mesh has NaN or infinite vertex coordinates (damaged model files or codes)")
    if faces.numel() and (faces.min() < 0 or faces.max() >= verts.shape[1]):
        raise ValueError(f"the mesh's faces index vertices outside 0..{verts.shape[1] - 1}")
    results = [_rasterize_one(v.float(), faces, height, width, max_pairs) for v in verts]
    maps = [torch.stack([r[i] for r in results]) for i in range(3)]
    return Fragments(*maps, pairs_evaluated=sum(r[3] for r in results))


def interpolate(fragments: Fragments, face_attributes: torch.Tensor) -> torch.Tensor:
    """(B, F, 3, D) per-corner attributes -> (B, D, H, W) interpolated with barycentrics, 0 where empty."""
    batch, height, width = fragments.pix_to_face.shape
    index = fragments.pix_to_face.clamp(min=0).view(batch, -1)
    gathered = torch.gather(face_attributes, 1, index[..., None, None].expand(-1, -1, 3, face_attributes.shape[-1]))
    values = (fragments.bary.view(batch, -1, 3, 1) * gathered).sum(2)
    values = values * (fragments.pix_to_face.view(batch, -1, 1) >= 0)
    return values.view(batch, height, width, -1).permute(0, 3, 1, 2)
