"""Read weight files without executing pickled code, and without allocating more than the file holds.

`.safetensors` through safetensors, its header bounded first (`check_safetensors_header`). Pickled files
(`.ckpt/.pth/.pt/.tar`, every torch layout: zip, legacy non-zip, legacy tar) go through torch's own reader with
`safe_files.restricted_pickle` as its pickle module, so every pickle torch reads — the data pickle and the legacy
format's magic-number, protocol, sys-info and storage pickles alike — resolves globals through an allow-list:
tensors, plain containers, dtypes; Lightning's trainer objects become inert placeholders; code-running globals are
refused. Before torch reads anything the container is checked (zip members stored and within the file, tar members
regular and within the file), every storage a pickle declares must fit in what is left of the file, and the
constructor calls of all the file's pickles together stay within the allocation budget of its pickle bytes
(`pickle_budget`), so a small file cannot ask for gigabytes.
"""

from __future__ import annotations

import _pickle
import contextlib
import struct
import tarfile
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from .pickle_budget import AllocationBudget, charge
from .restricted_pickle import (
    ForbiddenPickleError,
    Placeholder,
    RestrictedUnpickler,
    StorageTypeOnly,
    base_globals,
    check_tensor_view,
    torch_globals,
)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
MAX_OBJECTS_CHECKED = 10_000_000  # containers walked when checking every loaded tensor
# A CapFace/CLIP header is < 100 KB beside hundreds of MB of tensors; the library accepts 100 MB of header (~ 36 s
# and 1.3 GB to parse, ~ 1.6 M entries). Accepted: at most 2 MiB, and 64 KiB plus 1/16 of the file's tensor bytes.
MAX_SAFETENSORS_HEADER = 2 << 20
HEADER_BASE_BYTES = 64 << 10
TENSOR_BYTES_PER_HEADER_BYTE = 16


class WeightFileError(RuntimeError):
    """A weight file cannot be read (missing, truncated, not a weight file, or hostile); the message names it."""


class _StorageBudget:
    """Bytes of storage a file may still declare: what it holds."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.seen: set[Any] = set()

    def take(self, key: Any, nbytes: int, what: str) -> None:
        if key in self.seen:
            return
        if nbytes > self.left:
            raise ForbiddenPickleError(f"{what} declares {nbytes} bytes but the file has only {self.left} left")
        self.seen.add(key)
        self.left -= nbytes


def _element_size(storage_type: Any) -> int:
    dtype = getattr(storage_type, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        raise ForbiddenPickleError(f"refusing a storage of type {type(storage_type).__name__}")
    return torch.empty((), dtype=dtype).element_size()


def _checked_persistent_load(load: Any, budget: _StorageBudget) -> Any:
    """torch's `persistent_load` behind a check of the storage it is asked to create."""

    def persistent_load(saved_id: Any) -> Any:
        if not isinstance(saved_id, tuple) or len(saved_id) < 5:
            raise ForbiddenPickleError(f"refusing persistent id {type(saved_id).__name__}")
        typename = saved_id[0].decode("ascii") if isinstance(saved_id[0], bytes) else saved_id[0]
        if typename != "storage":
            raise ForbiddenPickleError(f"refusing persistent id of kind {typename!r}")
        storage_type, key, numel = saved_id[1], saved_id[2], saved_id[4]
        if not isinstance(numel, int) or numel < 0:
            raise ForbiddenPickleError(f"refusing a storage of {numel!r} elements")
        budget.take(("storage", key), numel * _element_size(storage_type), f"storage {key!r}")
        return load(saved_id)

    return persistent_load


def _restricted_module(limit: int, pickle_bytes: int) -> types.SimpleNamespace:
    """A `pickle_module` for torch: its `Unpickler` (the data pickle: unknown classes become inert placeholders)
    and `load` (every other pickle: unknown globals refused) resolve globals through the allow-list. Storages may
    take `limit` bytes (what the file holds); the constructors of all its pickles together, the allocation budget
    of `pickle_bytes` of pickle."""
    budget = _StorageBudget(limit)
    allowed = {**base_globals(), **torch_globals()}

    class Unpickler(RestrictedUnpickler):
        placeholders = True

        @property
        def persistent_load(self) -> Any:
            return self._persistent_load

        @persistent_load.setter
        def persistent_load(self, function: Any) -> None:  # torch assigns its own; ours checks it first
            self._persistent_load = _checked_persistent_load(function, budget)
            _pickle.Unpickler.__dict__["persistent_load"].__set__(self, self._persistent_load)

    Unpickler.allowed = allowed
    Unpickler.budget = AllocationBudget.for_pickle(pickle_bytes)

    class StrictUnpickler(Unpickler):  # the legacy layouts' header and storage pickles hold plain values only
        placeholders = False

    def load(file: IO[bytes], **kwargs: Any) -> Any:
        result = StrictUnpickler(file, **kwargs).load()
        if isinstance(result, tuple) and len(result) == 3 and isinstance(result[2], StorageTypeOnly):
            _check_tar_storage(file, result, budget)
        return result

    return types.SimpleNamespace(Unpickler=Unpickler, load=load, __name__="caphuman_restricted_pickle")


def _check_tar_storage(file: IO[bytes], header: tuple, budget: _StorageBudget) -> None:
    """Legacy tar: torch reads the storage's element count right after this pickle and allocates it."""
    here = file.tell()
    head = file.read(8)
    end = file.seek(0, 2)
    file.seek(here)
    count = struct.unpack("<q", head)[0] if len(head) == 8 else -1
    nbytes = count * _element_size(header[2])
    if count < 0 or nbytes > end - here - 8:
        raise ForbiddenPickleError(f"storage {header[0]!r} declares {count} elements, more than the file holds")
    budget.take(("tar", header[0]), nbytes, f"storage {header[0]!r}")


def _check_container(path: Path, size: int) -> tuple[bool, int]:
    """Refuse compressed or oversized members before torch reads them. (True for torch's zip layout, the bytes of
    pickle in it: the zip's `.pkl` members, else the whole file)."""
    with open(path, "rb") as handle:
        is_zip = handle.read(4) == b"PK\x03\x04"  # what torch tests
    if is_zip:
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.infolist()
        except Exception as error:  # noqa: BLE001 - any failure to parse the archive is the file's
            raise WeightFileError(f"{path.name}: cannot read its zip archive ({error}); the file may be truncated: "
                                  "download it again") from error
        for info in members:
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
                raise WeightFileError(f"{path.name}: member {info.filename!r} is compressed or larger than the file "
                                      "(torch stores weights uncompressed): refusing it")
        return True, sum(info.file_size for info in members if info.filename.endswith(".pkl"))
    try:
        with tarfile.open(path, "r:") as archive:
            members = archive.getmembers()
    except Exception:  # noqa: BLE001 - not a tar: torch reads it as the legacy non-zip layout
        return False, size
    for member in members:
        if not (member.isfile() or member.isdir()) or member.issparse() or member.size > size:
            raise WeightFileError(f"{path.name}: tar member {member.name!r} is not a plain file within the archive")
    return False, size


def _check_tensors(value: Any, name: str) -> None:
    """Every loaded tensor views at most its storage (no stride-0 expansion to billions of elements). A container
    the pickle references many times (memoised) is walked once."""
    stack, seen, walked = [value], 0, set()
    while stack:
        item = stack.pop()
        seen += 1
        if seen > MAX_OBJECTS_CHECKED:
            raise WeightFileError(f"{name}: more than {MAX_OBJECTS_CHECKED} objects")
        if isinstance(item, torch.Tensor):
            check_tensor_view(item.numel(), item.untyped_storage().nbytes() // max(item.element_size(), 1))
        elif isinstance(item, (dict, list, tuple)) and id(item) not in walked:
            walked.add(id(item))
            stack.extend(item.values() if isinstance(item, dict) else item)


def _pickle_error(name: str, error: Exception) -> WeightFileError:
    if isinstance(error, ForbiddenPickleError):
        return WeightFileError(f"{name}: {error} — the file was not loaded (it is not a plain weight file; "
                               "download it again from its official source)")
    return WeightFileError(f"{name}: cannot read it as a PyTorch weight file ({type(error).__name__}: {error}). "
                           "The file may be truncated or not a checkpoint: download it again.")


def load_pickled_weights(path: str | Path) -> Any:
    """`torch.load` a `.ckpt/.pth/.pt/.tar` without running its code; memory-mapped when it is a zip."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise WeightFileError(f"{path}: cannot read it ({error})") from error
    is_zip, pickle_bytes = _check_container(path, size)
    # torch.serialization.load, not torch.load: the webui replaces torch.load with a checker of its own that returns
    # None for files it does not know; the restricted pickle module already guarantees no code runs.
    try:
        data = torch.serialization.load(str(path), map_location="cpu", weights_only=False,
                                        pickle_module=_restricted_module(size, pickle_bytes), mmap=is_zip)
        if isinstance(data, Placeholder):
            raise WeightFileError(f"{path.name}: holds a {type(data).__module__[9:]}.{type(data).__name__} object, "
                                  "not weights — refused (nothing in it was run)")
        _check_tensors(data, path.name)
    except WeightFileError:
        raise
    except (Exception, RecursionError) as error:  # noqa: BLE001 - turned into a readable message
        raise _pickle_error(path.name, error) from error
    return data


def load_pickled_bytes(data: bytes, name: str) -> Any:
    """The same reader for a torch file embedded in another pickle (`torch.storage._load_from_bytes`)."""
    import io

    if data[:4] == b"PK\x03\x04":
        raise WeightFileError(f"{name}: embedded zip archives are not supported")
    try:
        charge(2 * len(data), f"an embedded torch file of {len(data):,} bytes")  # its storages, its buffer
        value = torch.serialization.load(io.BytesIO(data), map_location="cpu", weights_only=False,
                                         pickle_module=_restricted_module(len(data), len(data)))
        _check_tensors(value, name)
    except WeightFileError:
        raise
    except (Exception, RecursionError) as error:  # noqa: BLE001
        raise _pickle_error(name, error) from error
    return value


def check_safetensors_header(path: str | Path) -> None:
    """Refuse a safetensors header larger than the file holds or than a weight file needs, before the library
    parses it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as error:
        raise WeightFileError(f"{path}: cannot read it ({error})") from error
    if len(head) < 8:
        raise WeightFileError(f"{path.name}: {size} bytes, too short for a safetensors file: download it again")
    length = int.from_bytes(head, "little")
    if length > size - 8:
        raise WeightFileError(f"{path.name}: its safetensors header declares {length:,} bytes, more than the "
                              f"{size:,}-byte file holds; the file may be truncated: download it again")
    allowed = min(MAX_SAFETENSORS_HEADER, HEADER_BASE_BYTES + (size - 8 - length) // TENSOR_BYTES_PER_HEADER_BYTE)
    if length > allowed:
        raise WeightFileError(f"{path.name}: a safetensors header of {length:,} bytes for {size - 8 - length:,} bytes "
                              f"of tensors, more than the {allowed:,} a weight file of that size needs (CapHuman's "
                              "and CLIP's are < 100 KB): refusing to parse it")


@contextlib.contextmanager
def open_safetensors(path: str | Path) -> Iterator[Any]:
    """`safetensors.safe_open` (PyTorch, CPU) after `check_safetensors_header`."""
    from safetensors import safe_open

    check_safetensors_header(path)
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        yield handle


def load_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a weight file as a flat dict, plus safetensors metadata (empty for pickles).

    A Lightning checkpoint's `state_dict` entry is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"{path}: file not found")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        try:
            with open_safetensors(path) as handle:
                metadata = dict(handle.metadata() or {})
                return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
        except WeightFileError:
            raise
        except Exception as error:  # noqa: BLE001
            raise WeightFileError(f"{path.name}: cannot read it as safetensors ({error}). The file may be "
                                  "truncated: download it again.") from error
    data = load_pickled_weights(path)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise WeightFileError(f"{path.name}: expected a state dict, found {type(data).__name__}")
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}, {}

