"""One piece of work per key at a time (hashing a file, downloading it), and failures remembered for a while.

    flights = SingleFlight(remember_failures=30.0)
    digest = flights.run(key, lambda: sha256(path), reuse=lambda: cache.cached(path))

Callers with the same key wait for the one doing the work, then take its result through `reuse` (e.g. the hash it
cached, the file it downloaded); a failure is raised again, without retrying, to every caller within
`remember_failures` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")


class SingleFlight:
    def __init__(self, remember_failures: float = 0.0) -> None:
        self.remember_failures = remember_failures
        self._guard = threading.Lock()
        self._locks: dict[Hashable, tuple[threading.Lock, int]] = {}  # key -> (lock, callers holding or waiting)
        self._failures: dict[Hashable, tuple[float, BaseException]] = {}

    def waiting(self, key: Hashable) -> int:
        """Callers of `key` waiting for the one at work (for tests and diagnostics)."""
        with self._guard:
            entry = self._locks.get(key)
        return max(0, entry[1] - 1) if entry else 0

    def _enter(self, key: Hashable) -> threading.Lock:
        with self._guard:
            lock, users = self._locks.get(key, (None, 0))
            lock = lock or threading.Lock()
            self._locks[key] = (lock, users + 1)
            return lock

    def _leave(self, key: Hashable) -> None:
        with self._guard:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def recent_failure(self, key: Hashable) -> BaseException | None:
        with self._guard:
            entry = self._failures.get(key)
            if entry is not None and time.monotonic() - entry[0] > self.remember_failures:
                del self._failures[key]
                entry = None
        return entry[1] if entry else None

    def run(self, key: Hashable, work: Callable[[], T], reuse: Callable[[], T | None] = lambda: None) -> T:
        """`reuse()` if it gives a result, else the failure remembered for `key`, else `work()` (one at a time)."""
        lock = self._enter(key)
        try:
            with lock:
                found = reuse()
                if found is not None:
                    return found
                failure = self.recent_failure(key)
                if failure is not None:
                    raise _again(failure, self.remember_failures)
                try:
                    result = work()
                except Exception as error:
                    if self.remember_failures > 0:
                        with self._guard:
                            self._failures[key] = (time.monotonic(), error)
                    raise
                with self._guard:
                    self._failures.pop(key, None)
                return result
        finally:
            self._leave(key)


def _again(failure: BaseException, seconds: float) -> BaseException:
    """A remembered failure, raised anew with a note (the same object when its type cannot be rebuilt)."""
    try:
        again = type(failure)(f"{failure} (remembered: not tried again for {seconds:.0f} s after a failure)")
    except Exception:  # noqa: BLE001 - a type with another constructor
        return failure
    again.__cause__ = failure
    return again
