"""What the head model's files may hold: limits and checks applied before anything is built from them.

The real files: FLAME 2020 has 5023 vertices, 9976 faces, 5 joints, 400 blend shapes; the texture space is
512 x 512 x 3 x 200; DECA's landmark embedding has 51 static, 79 x 17 dynamic and 68 full landmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_VERTICES = 100_000
MAX_FACES = 200_000
MAX_UVS = 200_000
MAX_JOINTS = 64
MAX_BLEND_SHAPES = 1_000
MAX_LANDMARKS = 10_000
FLAME_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
LANDMARK_KEYS = tuple(f"{kind}_lmk_{field}" for kind in ("static", "dynamic", "full")
                      for field in ("faces_idx", "bary_coords"))


class HeadFileError(ValueError):
    """A DECA/FLAME file holds something the head model cannot be; the message names the file and the field."""


def check_arrays_dict(file: str, value: object, required: Sequence[str], what: str) -> dict:
    """`value` if it is a dict holding an array (numpy, torch or sparse) under each `required` key."""
    if not isinstance(value, dict):
        raise HeadFileError(f"{file}: expected {what}, found {type(value).__name__} — not loaded")
    missing = [k for k in required if k not in value]
    if missing:
        raise HeadFileError(f"{file}: not {what}: missing {missing} — not loaded")
    for key in required:
        item = value[key]
        if not (isinstance(item, np.ndarray) or hasattr(item, "toarray") or type(item).__name__ == "Tensor"):
            raise HeadFileError(f"{file}: '{key}' is a {type(item).__name__}, expected an array — not loaded")
    return value


def _declared_shape(value: object) -> tuple | None:
    shape = getattr(value, "shape", None)
    return shape() if callable(shape) else shape


def checked_array(file: str, field: str, value: object, shape: Sequence[int | None], dtype: type = np.float32,
                  max_elements: int = 1 << 26) -> np.ndarray:
    """`value` as a finite array of `shape` (None: any size); densifies sparse matrices only within the limit."""
    if hasattr(value, "toarray"):  # a pickled sparse matrix: its shape is checked before it is densified
        try:
            declared = tuple(_declared_shape(value))
            if len(declared) != len(shape) or any(w is not None and g != w for g, w in zip(declared, shape)):
                expected = "x".join("n" if n is None else str(n) for n in shape)
                raise ValueError(f"sparse matrix of shape {declared}, expected {expected}")
            value = value.toarray(max_elements)
        except TypeError:
            raise HeadFileError(f"{file}: '{field}' is an unsupported sparse matrix") from None
        except Exception as error:  # noqa: BLE001 - any failure is the file's
            raise HeadFileError(f"{file}: '{field}': {error}") from None
    try:
        array = np.asarray(value)
        if array.dtype.hasobject or array.size > max_elements:
            raise ValueError(f"{array.dtype} array of {array.size} elements")
        array = array.astype(dtype)
    except (TypeError, ValueError, OverflowError) as error:
        raise HeadFileError(f"{file}: '{field}' is not a numeric array ({error})") from None
    if array.ndim != len(shape) or any(want is not None and got != want for got, want in zip(array.shape, shape)):
        expected = "x".join("n" if n is None else str(n) for n in shape)
        raise HeadFileError(f"{file}: '{field}' has shape {array.shape}, expected {expected}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise HeadFileError(f"{file}: '{field}' holds NaN or infinite values")
    return array


def checked_indices(file: str, field: str, value: object, shape: Sequence[int | None], upper: int) -> np.ndarray:
    """Integer indices of `shape`, each in 0..upper-1."""
    array = np.asarray(value)
    if array.dtype.kind == "f":
        raise HeadFileError(f"{file}: '{field}' holds non-integer indices")
    array = checked_array(file, field, array, shape, np.int64)
    if array.size and (array.min() < 0 or array.max() >= upper):
        raise HeadFileError(f"{file}: '{field}' indexes outside 0..{upper - 1}")
    return array


def within(file: str, field: str, count: int, low: int, high: int) -> int:
    if not low <= count <= high:
        raise HeadFileError(f"{file}: {count} {field}, expected {low}..{high}")
    return count
