"""A least-recently-used cache bounded by the bytes its values hold (tensors, arrays, images) and by entry count."""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Generic, TypeVar

import numpy as np
import torch
from PIL import Image

V = TypeVar("V")

MB = 1 << 20


def nbytes(value, _seen: set[int] | None = None) -> int:
    """Bytes held by the tensors, arrays and images inside `value` (dataclasses, mappings and sequences are walked;
    an object reached twice is counted once; anything else counts 0)."""
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Image.Image):
        return value.width * value.height * len(value.getbands())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    if isinstance(value, Mapping):
        return sum(nbytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v, seen) for v in value)
    return 0


class ByteLRU(Generic[V]):
    """LRU cache holding at most `max_entries` values and `max_bytes` bytes of them (as `size_of` measures).

    Keys should describe the content (e.g. `photo_key`), so an equal photo in a new object hits. A value larger
    than `max_bytes` on its own is returned to the caller but not kept.
    """

    def __init__(self, max_bytes: int, max_entries: int = 1 << 30, size_of: Callable[[object], int] = nbytes) -> None:
        if max_bytes < 0 or max_entries < 0:
            raise ValueError("cache bounds must be >= 0")
        self.max_bytes = int(max_bytes)
        self.max_entries = int(max_entries)
        self.size_of = size_of
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self.total_bytes = 0
        self._lock = threading.RLock()  # API previews and generations may use one cache from two threads

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        """The value under `key` (now the most recently used), or `default`."""
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: Hashable, value: V) -> V:
        """Keep `value` under `key`, evicting the least recently used until both bounds hold; returns `value`."""
        size = self.size_of(value)
        with self._lock:
            self.pop(key)
            if size > self.max_bytes or self.max_entries == 0:
                return value
            self._items[key] = (value, size)
            self.total_bytes += size
            while len(self._items) > self.max_entries or self.total_bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self.total_bytes -= evicted
            return value

    def pop(self, key: Hashable) -> V | None:
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                return None
            self.total_bytes -= item[1]
            return item[0]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.total_bytes = 0

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        return list(self._items)
