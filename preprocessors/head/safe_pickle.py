"""Read FLAME's pickles without executing them.

`generic_model.pkl` holds chumpy arrays (and scipy sparse matrices); `landmark_embedding.npy` is a pickled dict of
numpy arrays and torch tensors. The unpickler below rebuilds numpy arrays, scipy sparse matrices and torch tensors,
turns chumpy objects into plain numpy arrays, and refuses every other class. chumpy is never imported.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np


class ForbiddenPickleError(pickle.UnpicklingError):
    """The pickle asks for a class that has no business in a model file."""


class ChumpyArray:
    """Stands in for a chumpy `Ch` object: keeps its pickled state, becomes numpy through `to_numpy`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_numpy(self) -> np.ndarray:
        state = self.state
        if isinstance(state, dict):
            for key in ("x", "r", "_x"):
                if key in state:
                    value = state[key]
                    return value.to_numpy() if isinstance(value, ChumpyArray) else np.asarray(value)
        raise ForbiddenPickleError(f"unsupported chumpy object (state keys: {list(state) if state else state})")


def _load_tensor_from_bytes(data: bytes):
    import torch

    return torch.serialization.load(io.BytesIO(data), map_location="cpu", weights_only=True)


_NUMPY = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
          ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
          ("numpy._core.multiarray", "scalar")}
_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes",
             "bytearray", "slice", "object"}
_SPARSE = {"csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array"}


class _FlameUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        import _compat_pickle

        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names (the real FLAME pickle is Python 2)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _NUMPY:
            return getattr(__import__(module, fromlist=[name]), name)
        if module.startswith("numpy") and name.endswith("Dtype"):  # numpy 2 dtype classes (numpy.dtypes.Float64DType)
            return getattr(__import__(module, fromlist=[name]), name)
        if module == "_codecs" and name == "encode":  # how protocol-2 pickles spell bytes
            import codecs

            return codecs.encode
        if module == "builtins" and name in _BUILTINS:
            return getattr(__import__("builtins"), name)
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            import copyreg

            return copyreg._reconstructor
        if module.startswith("scipy.sparse") and name in _SPARSE:
            import scipy.sparse

            return getattr(scipy.sparse, name)
        if module.startswith("chumpy"):
            return ChumpyArray
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
            import torch._utils

            return getattr(torch._utils, name)
        if module == "torch.storage" and name == "_load_from_bytes":
            return _load_tensor_from_bytes  # weights-only torch.load of the embedded bytes
        if module == "collections" and name == "OrderedDict":
            from collections import OrderedDict

            return OrderedDict
        if module == "torch" and name.endswith("Storage"):
            import torch

            return getattr(torch, name)
        raise ForbiddenPickleError(f"refusing to load {module}.{name} from a model file")


def _plain(value: Any) -> Any:
    """Chumpy placeholders -> numpy, recursively through containers."""
    if isinstance(value, ChumpyArray):
        return value.to_numpy()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def load_pickle(path: str | Path) -> Any:
    """Unpickle a FLAME `.pkl` with the restricted unpickler (latin1 for Python 2 pickles)."""
    with open(path, "rb") as handle:
        return _plain(_FlameUnpickler(handle, encoding="latin1").load())


def load_object_npy(path: str | Path) -> Any:
    """`np.load(path, allow_pickle=True)[()]` for an object .npy, without running arbitrary pickles."""
    from numpy.lib import format as npy_format

    with open(path, "rb") as handle:
        version = npy_format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = npy_format.read_array_header_2_0(handle)
        if dtype.hasobject:
            value = _FlameUnpickler(handle, encoding="latin1").load()
            value = value[()] if isinstance(value, np.ndarray) and value.shape == () else value
            return _plain(value)
    return np.load(path, allow_pickle=False)
