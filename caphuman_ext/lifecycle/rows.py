"""Which UNet rows belong to which image, read from the host's own CFG layout, consumed call by call."""

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


class RowPlan:
    """One sampling step's row layout, handed out to the UNet calls of that step in order.

    The host may run the step as one call or in chunks (A1111: `batch_cond_uncond` off, or uncond separately when
    prompt lengths differ; skip-early-CFG drops the uncond rows): each call takes the next `rows` entries. `step`
    identifies the step, so calls of one step can share CapFace work. When a call asks for more rows than are left,
    the plan is exhausted and `take` answers None (every row computed on its own).
    """

    def __init__(self, sources: Sequence[int], step: int) -> None:
        self.sources = tuple(sources)
        self.step = step
        self._cursor = 0

    def take(self, rows: int) -> tuple[int, ...] | None:
        start, end = self._cursor, self._cursor + rows
        if end > len(self.sources):
            self._cursor = len(self.sources)
            return None
        self._cursor = end
        return self.sources[start:end]
