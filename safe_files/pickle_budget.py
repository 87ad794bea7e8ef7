"""What one pickle may allocate through the constructors it calls, all calls together, sized from the file.

Opcodes alone build at most a few bytes of objects per byte of pickle; calls multiply that: a file can memoise
`bytearray` and `1 << 20` once and repeat `BINGET BINGET REDUCE` (5 bytes) thousands of times. Every allow-listed
constructor therefore states what it is about to allocate and charges it here *before* it runs; a load whose calls
would exceed the budget is refused, and so is one making more calls than a weight file of its size has.

    with AllocationBudget.for_pickle(len(data)).active():
        ...  # restricted unpickling; constructors call charge(...)

Loads nested in an active one (a torch file embedded in a numpy pickle) charge the same budget.
"""

from __future__ import annotations

import contextlib
import contextvars
import pickle
from collections.abc import Iterator
from typing import Any

BYTES_PER_PICKLE_BYTE = 4  # a real pickle's calls copy its array data once or twice (Python 2 str -> bytes -> array)
BASE_BYTES = 16 << 20  # plus this much for any pickle: keys, sizes, small containers
CALL_BYTES = 256  # charged per call on top of what it allocates: the object itself, its dict, its arguments
BASE_CALLS = 10_000
PICKLE_BYTES_PER_CALL = 8  # a real weight pickle spends more than 8 bytes per call (a tensor's record is ~ 100)
ITEM_BYTES = 104  # a container entry: its pointer plus, at worst, a new object (an element of an array or string)
HASHED_ITEM_BYTES = 160  # a dict or set entry


class ForbiddenPickleError(pickle.UnpicklingError):
    """The pickle asks for something a weight file has no business with (a function that runs code, a huge
    allocation); the message says what."""


class BudgetExceededError(ForbiddenPickleError):
    """The pickle's constructor calls would allocate more than a file of its size may; nothing was allocated."""


_ACTIVE: contextvars.ContextVar[AllocationBudget | None] = contextvars.ContextVar("caphuman_pickle_budget",
                                                                                  default=None)


class AllocationBudget:
    """Bytes and calls left to the constructors of one load (the loads nested in it included)."""

    def __init__(self, max_bytes: int, max_calls: int, pickle_bytes: int = 0) -> None:
        self.max_bytes, self.max_calls, self.pickle_bytes = max_bytes, max_calls, pickle_bytes
        self.used = self.calls = 0

    @classmethod
    def for_pickle(cls, pickle_bytes: int) -> AllocationBudget:
        """The budget of a pickle of `pickle_bytes` bytes (a weight file's, or the data it holds)."""
        pickle_bytes = max(int(pickle_bytes), 0)
        calls = BASE_CALLS + pickle_bytes // PICKLE_BYTES_PER_CALL
        return cls(BASE_BYTES + BYTES_PER_PICKLE_BYTE * pickle_bytes, calls, pickle_bytes)

    def charge(self, nbytes: int, what: str) -> None:
        """Account for one call about to allocate `nbytes`; raises before anything is allocated."""
        self.calls += 1
        if self.calls > self.max_calls:
            raise BudgetExceededError(f"refusing {what}: more than {self.max_calls:,} constructor calls, more than "
                                      f"a {self.pickle_bytes:,}-byte weight pickle makes")
        nbytes = max(int(nbytes), 0) + CALL_BYTES
        if self.used + nbytes > self.max_bytes:
            raise BudgetExceededError(
                f"refusing {what}: with it the pickle's constructor calls would allocate "
                f"{(self.used + nbytes) / 2**20:,.1f} MiB, more than the {self.max_bytes / 2**20:,.1f} MiB a "
                f"{self.pickle_bytes:,}-byte pickle may ({self.calls:,} calls so far)")
        self.used += nbytes

    @contextlib.contextmanager
    def active(self) -> Iterator[AllocationBudget]:
        """Make this the budget constructors charge, unless a load is already running (then that one is kept:
        everything a file asks for, nested loads included, is counted together)."""
        if _ACTIVE.get() is not None:
            yield _ACTIVE.get()
            return
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)


def charge(nbytes: int, what: str) -> None:
    """Charge the running load's budget (outside a load only the per-call checks of the callers apply)."""
    budget = _ACTIVE.get()
    if budget is not None:
        budget.charge(nbytes, what)


def active_budget() -> AllocationBudget | None:
    return _ACTIVE.get()


def buffer_bytes(value: Any) -> int | None:
    """The size of a bytes-like object's data, None for other objects."""
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    try:
        with memoryview(value) as view:
            return view.nbytes
    except TypeError:
        return None


def item_count(value: Any, what: str) -> int:
    """How many items iterating `value` yields; refuses what has no length (nothing a weight file needs)."""
    size = buffer_bytes(value)
    if isinstance(value, (bytes, bytearray)) or size is None:
        try:
            return len(value)
        except TypeError:
            raise BudgetExceededError(f"refusing {what} of a {type(value).__name__} (no length)") from None
    return size  # an array iterates by rows: at most one item per byte
