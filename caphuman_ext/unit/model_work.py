"""Model-heavy API work (scores) on one long-lived worker thread, with the C heap trimmed after each request.

Why: glibc gives every thread that allocates its own malloc arena and keeps freed arena memory mapped. Large
requests run on the event loop's thread pool land on a different thread each time, so each one leaves its peak in
another arena, and the process grows by hundreds of MB per request although Python and torch freed everything.
One worker thread reuses one arena; `malloc_trim(0)` hands its free pages back to the system.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import functools
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_WORKER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="caphuman-model-work")


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        return None


def trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc only; elsewhere nothing)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _trimmed(function: Callable[..., T], *args) -> T:
    try:
        return function(*args)
    finally:
        import gc

        gc.collect()
        trim_heap()


async def run_in_thread(function: Callable[..., T], *args) -> T:
    """`function(*args)` on the model-work thread, awaited without blocking the event loop."""
    return await asyncio.get_running_loop().run_in_executor(_WORKER, _trimmed, function, *args)
