"""Which UNet rows belong to which image: one row-plan type for every host's batch layout.

A1111 lays a CFG step out as each image's cond rows, then one uncond row per image (`RowPlan.cfg`), and may run
the step as one UNet call or several. Forge lays every UNet call out as whole chunks of the images, one chunk per
cond or uncond entry (`RowPlan.chunks`). Code without a sampler (tests, benchmarks, the Python API) gives a fixed
layout for every call (`RowPlan.fixed`). Rows that share an image share its latent, timestep, hint and identity, so
the engine runs CapFace once per image.
"""

from __future__ import annotations

from collections.abc import Sequence


def cfg_rows(repeats: Sequence[int], uncond_rows: int, extra_uncond_sets: int = 0) -> tuple[int, ...]:
    """Row -> image of A1111's CFG batch: image i's cond rows (`repeats[i]` of them: one per AND sub-prompt), then
    one uncond row per image (`extra_uncond_sets` more such sets for instruct-pix2pix's image-uncond rows)."""
    images = len(repeats)
    if uncond_rows not in (0, images):
        raise ValueError(f"{uncond_rows} uncond rows for {images} images")
    cond = tuple(image for image, count in enumerate(repeats) for _ in range(count))
    return cond + tuple(range(uncond_rows)) * (1 + extra_uncond_sets if uncond_rows else 0)


def chunk_rows(rows: int, images: int) -> tuple[int, ...] | None:
    """Row -> image of a batch made of whole chunks of `images` images; None when `rows` is not such a batch."""
    if images <= 0 or rows % images:
        return None
    return tuple(range(images)) * (rows // images)


class RowPlan:
    """The row layout of UNet calls, handed out call by call with `take(rows)`.

    Consumed (`RowPlan.cfg`): one sampling step's rows; each call of the step takes the next `rows` entries (A1111
    runs the step in chunks when `batch_cond_uncond` is off, or uncond separately when prompt lengths differ;
    skip-early-CFG drops the uncond rows). When a call asks for more rows than are left, the plan is exhausted and
    `take` answers None (every row computed on its own).
    Repeating (`RowPlan.chunks`, `RowPlan.fixed`): every call takes whole repetitions of the same pattern.

    `step` identifies one sampling step (None: the plan spans many steps): only calls of one step may share CapFace
    work across calls.
    """

    def __init__(self, sources: Sequence[int], step: object = None, repeating: bool = False) -> None:
        self.sources = tuple(sources)
        self.step = step
        self.repeating = repeating
        self._cursor = 0

    @classmethod
    def cfg(cls, repeats: Sequence[int], uncond_rows: int, extra_uncond_sets: int = 0,
            step: object = 0) -> RowPlan:
        """One A1111 CFG step (see `cfg_rows`)."""
        return cls(cfg_rows(repeats, uncond_rows, extra_uncond_sets), step)

    @classmethod
    def chunks(cls, images: int, step: object = None) -> RowPlan:
        """Forge's layout: every call is whole chunks of the `images` images (one per cond or uncond entry)."""
        return cls(range(images), step, repeating=True)

    @classmethod
    def fixed(cls, sources: Sequence[int]) -> RowPlan:
        """The same layout for every call, across steps (no sampler to say where a step begins)."""
        return cls(sources, None, repeating=True)

    def take(self, rows: int) -> tuple[int, ...] | None:
        if self.repeating:
            return chunk_rows(rows, len(self.sources)) and self.sources * (rows // len(self.sources))
        start, end = self._cursor, self._cursor + rows
        if end > len(self.sources):
            self._cursor = len(self.sources)
            return None
        self._cursor = end
        return self.sources[start:end]
