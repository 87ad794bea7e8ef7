"""Read FLAME's pickles without executing them and without letting them size an allocation.

`generic_model.pkl` holds chumpy arrays (and scipy sparse matrices); `landmark_embedding.npy` is a pickled dict of
numpy arrays and torch tensors. The unpickler below calls neither numpy's nor scipy's own reconstructors (numpy's
`ndarray.__setstate__` trusts the pickle's shape: a wrong object-array length crashes the process): arrays, dtypes,
scalars and sparse matrices are rebuilt here from their pickled data, whose size must match the declared shape, so
nothing is larger than the file. Chumpy objects become plain numpy arrays, torch tensors go through
`safe_files.weights`, every other global is refused. chumpy is never imported.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .head_limits import FLAME_KEYS, LANDMARK_KEYS, check_arrays_dict
from .pickle_budget import HASHED_ITEM_BYTES, AllocationBudget, buffer_bytes, charge
from .restricted_pickle import (
    ForbiddenPickleError,
    Placeholder,
    RestrictedUnpickler,
    base_globals,
    rebuild_parameter,
    rebuild_tensor_v2,
)

MAX_ARRAY_ELEMENTS = 1 << 26  # one array: FLAME's largest (shapedirs) has 5023 x 3 x 400 = 6e6
MAX_OBJECT_NPY_BYTES = 64 << 20  # landmark_embedding.npy is ~ 100 KB

__all__ = ["ChumpyArray", "ForbiddenPickleError", "load_flame_model", "load_landmark_embedding", "load_object_npy",
           "load_pickle"]

_DTYPE_NAME = re.compile(r"^[<>|=]?(b1|[iu][1248]|f[248]|f16|c8|c16|c32|O[48]?|[SUV]\d{1,6})$")


class PickledDType(Placeholder):
    """`numpy.dtype(name, align, copy)` + its BUILD state, limited to plain numeric/string/object dtypes."""

    def __init__(self, name: Any = "f8", *args: Any) -> None:
        if isinstance(name, bytes):
            name = name.decode("latin1")
        if not isinstance(name, str) or not _DTYPE_NAME.match(name):
            raise ForbiddenPickleError(f"refusing numpy dtype {str(name)[:40]!r}")
        self.name, self.order = name, "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]

    def resolve(self) -> np.dtype:
        dtype = np.dtype(self.name)
        return dtype.newbyteorder(self.order) if self.order in "<>" else dtype


class _NdarrayType:
    """`numpy.ndarray` as a pickle names it: only an argument of `_reconstruct`, never called."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _NdarrayType:
        raise ForbiddenPickleError("refusing to call numpy.ndarray")


def _dtype_of(value: Any) -> np.dtype:
    if not isinstance(value, PickledDType):
        raise ForbiddenPickleError(f"expected a numpy dtype, found {type(value).__name__}")
    return value.resolve()


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, str):  # Python 2 pickles read with latin1
        return data.encode("latin1")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise ForbiddenPickleError(f"expected raw array data, found {type(data).__name__}")


def _checked_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or len(shape) > 32 or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ForbiddenPickleError(f"refusing array shape {str(shape)[:80]}")
    if math.prod(shape) > MAX_ARRAY_ELEMENTS:
        raise ForbiddenPickleError(f"refusing an array of shape {tuple(shape)} (more than {MAX_ARRAY_ELEMENTS} "
                                   "elements)")
    return tuple(shape)


def _array_from_data(shape: Any, dtype: np.dtype, data: Any, fortran: bool = False) -> np.ndarray:
    """An array whose data is exactly `shape` x dtype (object arrays: a list of that many items)."""
    shape = _checked_shape(shape)
    count = math.prod(shape)
    order = "F" if fortran else "C"
    if dtype.hasobject:
        if not isinstance(data, list) or len(data) != count:
            raise ForbiddenPickleError(f"object array of shape {shape} with {type(data).__name__} data")
        charge(8 * count, f"a numpy object array of {count:,} items")
        array = np.empty(count, dtype=object)
        for index, item in enumerate(data):
            array[index] = item
        return array.reshape(shape, order=order)
    nbytes = count * dtype.itemsize
    given = len(data) if isinstance(data, (str, bytes, bytearray)) else buffer_bytes(data)
    if given is None:
        raise ForbiddenPickleError(f"expected raw array data, found {type(data).__name__}")
    if given != nbytes:
        raise ForbiddenPickleError(f"array of shape {shape} {dtype} needs {nbytes} bytes, the pickle has {given}")
    charge(nbytes if isinstance(data, bytes) else 2 * nbytes, f"a numpy array of {nbytes:,} bytes")
    return np.frombuffer(_as_bytes(data), dtype=dtype).reshape(shape, order=order).copy()


class PickledArray(Placeholder):
    """`numpy.core.multiarray._reconstruct(ndarray, ...)` + BUILD state, rebuilt by `_array_from_data`."""

    value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise ForbiddenPickleError("malformed numpy array state")
        shape, dtype, fortran, data = state[-4:]
        self.value = _array_from_data(shape, _dtype_of(dtype), data, bool(fortran))

    def to_numpy(self) -> np.ndarray:
        if self.value is None:
            raise ForbiddenPickleError("numpy array without data")
        return self.value


def _reconstruct(subtype: Any, shape: Any = (0,), code: Any = b"b") -> PickledArray:
    if subtype is not _NdarrayType:
        raise ForbiddenPickleError(f"refusing numpy _reconstruct of {getattr(subtype, '__name__', subtype)}")
    return PickledArray()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: str = "C") -> np.ndarray:
    return _array_from_data(shape, _dtype_of(dtype), buffer, order == "F")


def _scalar(dtype: Any, data: Any = None) -> Any:
    charge(0, "numpy scalar")
    dtype = _dtype_of(dtype)
    if dtype.hasobject:
        return data
    raw = _as_bytes(data)
    if len(raw) != dtype.itemsize:
        raise ForbiddenPickleError(f"numpy {dtype} scalar with {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype)[0]


class ChumpyArray(Placeholder):
    """Stands in for a chumpy `Ch` object: keeps its pickled state, becomes numpy through `to_numpy`."""

    state: Any = None

    def to_numpy(self, depth: int = 0, done: dict[int, Any] | None = None) -> np.ndarray:
        state = self.state
        if isinstance(state, dict):
            for key in ("x", "r", "_x"):
                if key in state:
                    value = _plain(state[key], depth + 1, done)
                    return value if isinstance(value, np.ndarray) else np.asarray(value)
        raise ForbiddenPickleError(f"unsupported chumpy object (state keys: {list(state) if state else state})")


class SparseMatrix(Placeholder):
    """A pickled scipy sparse matrix (csc/csr/coo): its state, densified only within `max_elements`."""

    state: Any = None
    format = "csc"

    def shape(self) -> tuple[int, ...]:
        state = self.state if isinstance(self.state, dict) else {}
        shape = state.get("_shape", state.get("shape"))
        if not isinstance(shape, tuple) or len(shape) != 2 or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ForbiddenPickleError(f"sparse matrix with shape {str(shape)[:60]}")
        return shape

    def toarray(self, max_elements: int = MAX_ARRAY_ELEMENTS) -> np.ndarray:
        """The dense matrix, after checking its shape and its indices (scipy's full format check)."""
        import scipy.sparse

        shape = self.shape()
        if math.prod(shape) > max_elements:
            raise ForbiddenPickleError(f"sparse matrix of shape {shape}: more than {max_elements} elements dense")
        state = {k: _plain(v) for k, v in self.state.items()}
        try:
            if self.format == "coo":
                matrix = scipy.sparse.coo_matrix((state["data"], (state["row"], state["col"])), shape=shape)
            else:
                build = scipy.sparse.csc_matrix if self.format == "csc" else scipy.sparse.csr_matrix
                matrix = build((state["data"], state["indices"], state["indptr"]), shape=shape)
                matrix.check_format(full_check=True)
        except (KeyError, ValueError, TypeError, IndexError) as error:
            raise ForbiddenPickleError(f"malformed sparse matrix: {error}") from error
        return matrix.toarray()


_SPARSE = {f"{kind}_{container}": type(f"{kind}_{container}", (SparseMatrix,), {"format": kind})
           for kind in ("csc", "csr", "coo") for container in ("matrix", "array")}


def _load_tensor_from_bytes(data: bytes) -> Any:
    """`torch.storage._load_from_bytes`: a torch file inside the pickle, read by the same restricted reader."""
    from .weights import WeightFileError, load_pickled_bytes

    try:
        return load_pickled_bytes(_as_bytes(data), "embedded tensor")
    except WeightFileError as error:
        raise ForbiddenPickleError(str(error)) from error


def _flame_globals() -> dict[tuple[str, str], Any]:
    allowed = base_globals()
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _reconstruct
        allowed[(module, "scalar")] = _scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = _frombuffer
    allowed[("numpy", "ndarray")] = _NdarrayType
    allowed[("numpy", "dtype")] = PickledDType
    allowed[("torch._utils", "_rebuild_tensor_v2")] = rebuild_tensor_v2
    allowed[("torch._utils", "_rebuild_parameter")] = rebuild_parameter
    allowed[("torch.storage", "_load_from_bytes")] = _load_tensor_from_bytes
    return allowed


class _FlameUnpickler(RestrictedUnpickler):
    allowed = _flame_globals()

    def __init__(self, file: Any, pickle_bytes: int, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.budget = AllocationBudget.for_pickle(pickle_bytes)

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("scipy.sparse") and name in _SPARSE:
            return _SPARSE[name]
        if module.startswith("chumpy"):
            return ChumpyArray
        return super().find_class(module, name)


def _plain(value: Any, depth: int = 0, done: dict[int, Any] | None = None) -> Any:
    """Placeholders -> numpy, recursively through containers (sparse matrices stay sparse until checked). A
    container the pickle references many times is converted once (`done`: by id); copies charge the load's
    budget."""
    if depth > 64:
        raise ForbiddenPickleError("containers nested more than 64 deep")
    done = {} if done is None else done
    if id(value) in done:
        return done[id(value)][1]
    if not isinstance(value, (Placeholder, np.ndarray, dict, list, tuple)):
        return value
    original = value
    if isinstance(value, ChumpyArray):
        value = value.to_numpy(depth, done)
    elif isinstance(value, PickledArray):
        value = value.to_numpy()
    if isinstance(value, np.ndarray) and value.dtype.hasobject:
        charge(8 * value.size, f"a copy of a numpy object array of {value.size:,} items")
        out = np.empty(value.size, dtype=object)
        for index, item in enumerate(value.reshape(-1)):
            out[index] = _plain(item, depth + 1, done)
        value = out.reshape(value.shape)
    elif isinstance(value, dict):
        charge(HASHED_ITEM_BYTES * len(value), f"a copy of a dict of {len(value):,} items")
        value = {k: _plain(v, depth + 1, done) for k, v in value.items()}
    elif isinstance(value, (list, tuple)):
        charge(8 * len(value), f"a copy of a {type(value).__name__} of {len(value):,} items")
        value = type(value)(_plain(v, depth + 1, done) for v in value)
    elif isinstance(value, Placeholder) and not isinstance(value, SparseMatrix):
        raise ForbiddenPickleError(f"unexpected {type(value).__name__} object")
    done[id(original)] = (original, value)  # the original is kept alive: its id stays its own
    return value


def _unpickle(handle: Any, name: str, pickle_bytes: int) -> Any:
    """The pickle at `handle` (of at most `pickle_bytes`), its constructors and conversions within the budget of
    that size."""
    unpickler = _FlameUnpickler(handle, pickle_bytes, encoding="latin1")
    try:
        with unpickler.budget.active():
            return _plain(unpickler.load())
    except ForbiddenPickleError as error:
        raise ForbiddenPickleError(f"{name}: {error} — not loaded (download the file again from its source)") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError, RecursionError, MemoryError,
            OverflowError, __import__("pickle").UnpicklingError) as error:
        raise ForbiddenPickleError(f"{name}: not a readable model pickle ({type(error).__name__}: {error})") from None


def load_pickle(path: str | Path) -> Any:
    """Unpickle a FLAME `.pkl` with the restricted unpickler (latin1 for Python 2 pickles)."""
    with open(path, "rb") as handle:
        return _unpickle(handle, Path(path).name, os.fstat(handle.fileno()).st_size)


def load_object_npy(path: str | Path) -> Any:
    """`np.load(path, allow_pickle=True)[()]` for an object .npy, without running arbitrary pickles."""
    from numpy.lib import format as npy_format

    path = Path(path)
    if path.stat().st_size > MAX_OBJECT_NPY_BYTES:
        raise ForbiddenPickleError(f"{path.name}: {path.stat().st_size} bytes, more than a landmark embedding holds")
    with open(path, "rb") as handle:
        try:
            version = npy_format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(handle)
            else:
                shape, _, dtype = npy_format.read_array_header_2_0(handle)
        except ValueError as error:
            raise ForbiddenPickleError(f"{path.name}: not a .npy file ({error})") from None
        if dtype.hasobject:
            value = _unpickle(handle, path.name, os.fstat(handle.fileno()).st_size - handle.tell())
            return value[()] if isinstance(value, np.ndarray) and value.shape == () else value
    _checked_shape(shape)
    return np.load(path, allow_pickle=False)


def load_flame_model(path: str | Path) -> dict[str, Any]:
    """FLAME's `generic_model.pkl`: refused unless it is a dict holding FLAME's arrays (checked in detail by
    `Flame`)."""
    return check_arrays_dict(Path(path).name, load_pickle(path), FLAME_KEYS, "FLAME's dict of arrays")


def load_landmark_embedding(path: str | Path) -> dict[str, Any]:
    """DECA's `landmark_embedding.npy`: refused unless it is a dict holding the landmark arrays."""
    return check_arrays_dict(Path(path).name, load_object_npy(path), LANDMARK_KEYS, "DECA's landmark dict")
