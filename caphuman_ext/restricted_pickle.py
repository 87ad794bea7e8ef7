"""A pickle reader that calls nothing from the file but an allow-list of constructors, each with bounded sizes.

Pickles build objects in two ways: opcodes (numbers, strings, containers — bounded by the file's own size) and calls
to globals the file names (`find_class` + REDUCE/NEWOBJ/BUILD). Here every global resolves to an allow-listed,
size-checked constructor, to an inert placeholder class that is never imported nor called (trainer objects of Lightning
checkpoints, when the caller allows them; a payload such as `os.system` becomes such a placeholder too), or to a
refusal.
"""

from __future__ import annotations

import _compat_pickle
import _pickle
import collections
import copyreg
import pickle
from collections.abc import Callable
from typing import Any

MAX_CONSTRUCTED_BYTES = 1 << 20  # bytes(n)/bytearray(n) from a size: real pickles pass data, never a size
MAX_TENSOR_ELEMENTS = 1 << 34  # one tensor/array; caphuman.ckpt's largest has ~ 1e8


class ForbiddenPickleError(pickle.UnpicklingError):
    """The pickle asks for something a weight file has no business with (a function that runs code, a huge
    allocation); the message says what."""


class Placeholder:
    """Stands in for a class the reader will not import; keeps what the pickle gave it and does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def placeholder_class(module: str, name: str) -> type:
    return type(name, (Placeholder,), {"__module__": f"unloaded.{module}"})


def _bounded_bytes(kind: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if args and isinstance(args[0], int) and not isinstance(args[0], bool) and args[0] > MAX_CONSTRUCTED_BYTES:
            raise ForbiddenPickleError(f"refusing {kind.__name__}({args[0]}): a weight file passes data, "
                                       "not a size to allocate")
        return kind(*args)

    build.__name__ = kind.__name__
    return build


def _checked_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor for plain objects only (placeholders, OrderedDict); never a builtin from a size."""
    if base is not object or not isinstance(cls, type) or not issubclass(cls, (Placeholder, collections.OrderedDict)):
        raise ForbiddenPickleError(f"refusing copyreg._reconstructor({getattr(cls, '__name__', cls)}, "
                                   f"{getattr(base, '__name__', base)})")
    return copyreg._reconstructor(cls, base, state)


_BUILTIN_TYPES = {name: getattr(__import__("builtins"), name) for name in
                  ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "slice",
                   "object")}


def base_globals() -> dict[tuple[str, str], Any]:
    """Plain Python values every weight pickle may use."""
    allowed: dict[tuple[str, str], Any] = {("builtins", n): v for n, v in _BUILTIN_TYPES.items()}
    allowed[("builtins", "bytes")] = _bounded_bytes(bytes)
    allowed[("builtins", "bytearray")] = _bounded_bytes(bytearray)
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("copyreg", "_reconstructor")] = _checked_reconstructor
    allowed[("_codecs", "encode")] = _latin1_encode  # how protocol-2 pickles spell bytes
    return allowed


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
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, bool(requires_grad),
                                           collections.OrderedDict(), None)


def rebuild_parameter(data: Any, requires_grad: bool = False, backward_hooks: Any = None) -> Any:
    import torch

    if not isinstance(data, torch.Tensor) or backward_hooks:
        raise ForbiddenPickleError("refusing a parameter that is not a plain tensor")
    return torch.nn.Parameter(data, bool(requires_grad))


def torch_globals() -> dict[tuple[str, str], Any]:
    """Tensors, their sizes and dtypes (storages come from torch's own loader through `persistent_load`)."""
    import torch

    allowed = {("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
               ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
               ("torch", "Size"): torch.Size}
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
    else is refused."""

    allowed: dict[tuple[str, str], Any] = {}
    placeholders = False

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if self.placeholders:  # inert: nothing the pickle names is imported or called
            return placeholder_class(module, name)
        raise ForbiddenPickleError(f"refusing to load {module}.{name}: weight files hold data, not code")
