"""A pickle reader that calls nothing from the file but an allow-list of constructors, each with bounded sizes.

Pickles build objects in two ways: opcodes (numbers, strings, containers — bounded by the file's own size) and calls
to globals the file names (`find_class` + REDUCE/NEWOBJ/BUILD). Here every global resolves to an allow-listed,
size-checked constructor, to an inert placeholder class that is never imported nor called (trainer objects of Lightning
checkpoints, when the caller allows them; a payload such as `os.system` becomes such a placeholder too), or to a
refusal. What the calls allocate, all together, is charged to the load's `pickle_budget.AllocationBudget` before each
call runs.
"""

from __future__ import annotations

import _compat_pickle
import _pickle
import collections
import copyreg
from collections.abc import Callable
from typing import Any

from .pickle_budget import (
    HASHED_ITEM_BYTES,
    ITEM_BYTES,
    AllocationBudget,
    ForbiddenPickleError,
    buffer_bytes,
    charge,
    item_count,
)

MAX_CONSTRUCTED_BYTES = 1 << 20  # bytes(n)/bytearray(n) from a size: real pickles pass data, never a size
MAX_TENSOR_ELEMENTS = 1 << 34  # one tensor/array; caphuman.ckpt's largest has ~ 1e8


class Placeholder:
    """Stands in for a class the reader will not import; keeps what the pickle gave it and does nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:  # REDUCE and NEWOBJ both come through here
        charge(0, f"{cls.__name__}(...)")
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        charge(0, f"{type(self).__name__}.__setstate__")
        self.state = state


def placeholder_class(module: str, name: str) -> type:
    return type(name, (Placeholder,), {"__module__": f"unloaded.{module}"})


class Metered:
    """An allow-listed constructor that charges the load's `AllocationBudget` with what it is about to allocate
    (`cost(*args)` bytes) before it runs. Not a type: NEWOBJ cannot bypass it through `cls.__new__`."""

    def __init__(self, build: Callable[..., Any], cost: Callable[..., int], name: str | None = None) -> None:
        self.build, self.cost = build, cost
        self.__name__ = name or getattr(build, "__name__", type(build).__name__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        what = f"{self.__name__}({_describe_args(args)})"
        charge(self.cost(*args, **kwargs), what)
        return self.build(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<metered {self.__name__}>"


def unwrap(value: Any) -> Any:
    """The constructor behind a `Metered` (for identity checks such as `copyreg._reconstructor`'s base)."""
    return value.build if isinstance(value, Metered) else value


def _describe_args(args: tuple) -> str:
    parts = []
    for arg in args[:3]:
        if isinstance(arg, (int, float, bool)) or arg is None:
            parts.append(repr(arg))
        else:
            size = buffer_bytes(arg)
            parts.append(f"<{type(arg).__name__} of {size if size is not None else _length(arg)} "
                         f"{'bytes' if size is not None else 'items'}>")
    return ", ".join(parts) + (", ..." if len(args) > 3 else "")


def _length(value: Any) -> str:
    try:
        return f"{len(value):,}"
    except TypeError:
        return "?"


def _bytes_cost(kind: type) -> Callable[..., int]:
    def cost(source: Any = None, encoding: Any = None, errors: Any = None) -> int:
        if source is None:
            return 0
        if isinstance(source, int) and not isinstance(source, bool):
            if source > MAX_CONSTRUCTED_BYTES:
                raise ForbiddenPickleError(f"refusing {kind.__name__}({source}): a weight file passes data, "
                                           "not a size to allocate")
            return max(source, 0)
        if isinstance(source, str):
            return 4 * len(source)
        size = buffer_bytes(source)
        return size if size is not None else item_count(source, kind.__name__)

    return cost


def _container_cost(kind: type, per_item: int) -> Callable[..., int]:
    def cost(*args: Any, **kwargs: Any) -> int:
        return per_item * (sum(item_count(a, kind.__name__) for a in args) + len(kwargs))

    return cost


def _str_cost(value: Any = "", encoding: Any = None, errors: Any = None) -> int:
    if isinstance(value, str) or value is None or isinstance(value, (int, float)):
        return 4 * len(value) if isinstance(value, str) else 64  # ints: at most sys.get_int_max_str_digits()
    size = buffer_bytes(value)
    if size is None:  # the repr of a container can be exponentially larger than the pickle
        raise ForbiddenPickleError(f"refusing str() of a {type(value).__name__}")
    return 4 * size + 8


def _number_cost(value: Any = 0, *args: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, bytearray)) else 32  # parsing a string: its length


def _no_cost(*args: Any, **kwargs: Any) -> int:
    return 0


def _checked_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor for plain objects only (placeholders, OrderedDict); never a builtin from a size."""
    cls, base = unwrap(cls), unwrap(base)
    if base is not object or not isinstance(cls, type) or not issubclass(cls, (Placeholder, collections.OrderedDict)):
        raise ForbiddenPickleError(f"refusing copyreg._reconstructor({getattr(cls, '__name__', cls)}, "
                                   f"{getattr(base, '__name__', base)})")
    return copyreg._reconstructor(cls, base, state)


_CONTAINERS = {"list": ITEM_BYTES, "tuple": ITEM_BYTES, "set": HASHED_ITEM_BYTES, "frozenset": HASHED_ITEM_BYTES,
               "dict": HASHED_ITEM_BYTES}
_NUMBERS = ("int", "float", "complex")
_PLAIN = ("bool", "slice", "object")


def base_globals() -> dict[tuple[str, str], Any]:
    """Plain Python values every weight pickle may use, each charging the load's budget."""
    builtins = __import__("builtins")
    allowed: dict[tuple[str, str], Any] = {}
    for name, per_item in _CONTAINERS.items():
        allowed[("builtins", name)] = Metered(getattr(builtins, name), _container_cost(getattr(builtins, name),
                                                                                       per_item))
    for name in _NUMBERS:
        allowed[("builtins", name)] = Metered(getattr(builtins, name), _number_cost)
    for name in _PLAIN:
        allowed[("builtins", name)] = Metered(getattr(builtins, name), _no_cost)
    allowed[("builtins", "str")] = Metered(str, _str_cost)
    allowed[("builtins", "bytes")] = Metered(bytes, _bytes_cost(bytes))
    allowed[("builtins", "bytearray")] = Metered(bytearray, _bytes_cost(bytearray))
    allowed[("collections", "OrderedDict")] = Metered(collections.OrderedDict,
                                                      _container_cost(collections.OrderedDict, HASHED_ITEM_BYTES))
    allowed[("copyreg", "_reconstructor")] = Metered(_checked_reconstructor, _no_cost, "copyreg._reconstructor")
    allowed[("_codecs", "encode")] = Metered(_latin1_encode, _encode_cost, "_codecs.encode")  # protocol-2 bytes
    return allowed


def _encode_cost(text: Any = "", *args: Any) -> int:
    return 4 * len(text) if isinstance(text, str) else 0


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if not isinstance(text, str):
        raise ForbiddenPickleError("refusing _codecs.encode of a non-string")
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise ForbiddenPickleError(f"refusing _codecs.encode(..., {encoding!r})")
    return text.encode(encoding, errors)


def check_tensor_view(numel: int, storage_elements: int, what: str = "tensor") -> None:
    """A tensor may view its storage but not expand it (stride 0 over a few bytes into billions of elements)."""
    if numel > MAX_TENSOR_ELEMENTS or numel > max(storage_elements, 1):
        raise ForbiddenPickleError(f"refusing a {what} of {numel} elements over a storage of {storage_elements}")


def rebuild_tensor_v2(storage: Any, storage_offset: int, size: Any, stride: Any, requires_grad: bool = False,
                      backward_hooks: Any = None, metadata: Any = None) -> Any:
    """torch._utils._rebuild_tensor_v2 with checks: a real storage, no hooks, no expansion beyond the storage."""
    import math

    import torch

    if not isinstance(storage, torch.storage.TypedStorage):
        raise ForbiddenPickleError(f"refusing a tensor over {type(storage).__name__} (expected a storage)")
    if backward_hooks:
        raise ForbiddenPickleError("refusing a tensor with backward hooks")
    if not all(isinstance(v, int) and v >= 0 for v in (storage_offset, *size, *stride)):
        raise ForbiddenPickleError("refusing a tensor with negative or non-integer sizes")
    check_tensor_view(math.prod(size), storage._size())
    charge(8 * (len(size) + len(stride)), "torch._utils._rebuild_tensor_v2")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, bool(requires_grad),
                                           collections.OrderedDict(), None)


def rebuild_parameter(data: Any, requires_grad: bool = False, backward_hooks: Any = None) -> Any:
    import torch

    if not isinstance(data, torch.Tensor) or backward_hooks:
        raise ForbiddenPickleError("refusing a parameter that is not a plain tensor")
    charge(0, "torch._utils._rebuild_parameter")
    return torch.nn.Parameter(data, bool(requires_grad))


def torch_globals() -> dict[tuple[str, str], Any]:
    """Tensors, their sizes and dtypes (storages come from torch's own loader through `persistent_load`)."""
    import torch

    allowed = {("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
               ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
               ("torch", "Size"): Metered(torch.Size, _container_cost(torch.Size, 8), "torch.Size")}
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            allowed[("torch", name)] = value
        elif isinstance(value, type) and issubclass(value, torch.storage._LegacyStorage):
            allowed[("torch", name)] = StorageTypeOnly(value)
    return allowed


class StorageTypeOnly:
    """A torch storage class a legacy file names (for its dtype); calling it to allocate is refused."""

    def __init__(self, storage_class: type) -> None:
        self.storage_class = storage_class
        self.dtype = self._dtype = storage_class._dtype
        self.__name__ = storage_class.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ForbiddenPickleError(f"refusing to construct {self.__name__} from a pickle")


class RestrictedUnpickler(_pickle.Unpickler):
    """Resolves globals through `allowed`; anything else becomes an inert placeholder when `placeholders` is true,
    else is refused. `load` runs under `budget` (one per file: every pickle of the file charges it), or under the
    budget of the load it is nested in."""

    allowed: dict[tuple[str, str], Any] = {}
    placeholders = False
    budget: AllocationBudget | None = None

    def load(self) -> Any:
        with (self.budget or AllocationBudget.for_pickle(0)).active():
            return super().load()

    def find_class(self, module: str, name: str) -> Any:
        charge(0, f"the global {str(module)[:60]}.{str(name)[:60]}")
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if self.placeholders:  # inert: nothing the pickle names is imported or called; one class per name
            classes = self.__dict__.setdefault("_placeholder_classes", {})
            if (module, name) not in classes:
                classes[(module, name)] = placeholder_class(module, name)
            return classes[(module, name)]
        raise ForbiddenPickleError(f"refusing to load {module}.{name}: weight files hold data, not code")
