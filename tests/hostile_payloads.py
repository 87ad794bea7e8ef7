"""Hostile files for the loaders: code-running pickles in every layout torch and numpy read, and small files that
declare huge sizes. Each payload, if it ever ran, would create `marker`; nothing here is executed by the writers."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess
import tarfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

PROTOCOLS = range(0, pickle.HIGHEST_PROTOCOL + 1)


class SystemPayload:
    """os.system('touch marker')."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class ExecPayload(SystemPayload):
    """builtins.exec of Python that creates the marker."""

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


class SubprocessPayload(SystemPayload):
    def __reduce__(self):
        return subprocess.call, (["touch", self.marker],)


PAYLOADS = (SystemPayload, ExecPayload, SubprocessPayload)


class Sized:
    """A constructor called with a hostile size: `kind(size)` when unpickled (bytearray(10**10), range(...))."""

    def __init__(self, kind, *args) -> None:
        self.kind, self.args = kind, args

    def __reduce__(self):
        return self.kind, self.args


def torch_zip(obj, protocol: int = 2) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, pickle_protocol=protocol)
    return buffer.getvalue()


def torch_legacy(obj, protocol: int = 2) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, pickle_protocol=protocol, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


def legacy_with_payload_in(position: str, payload, protocol: int = 2) -> bytes:
    """torch's legacy layout: magic number, protocol, sys info, data pickles; the payload replaces one of them."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    parts = {"magic": MAGIC_NUMBER, "protocol": PROTOCOL_VERSION, "sys_info": {"little_endian": True},
             "data": {"state_dict": {}}}
    parts[position] = payload
    return b"".join(pickle.dumps(v, protocol=protocol) for v in parts.values()) + pickle.dumps([], protocol=protocol)


def legacy_tar(payload, protocol: int = 2, where: str = "pickle") -> bytes:
    """torch's oldest layout: a tar with `storages`, `tensors` and `pickle` members."""
    members = {"storages": pickle.dumps(0, protocol=protocol) + pickle.dumps([], protocol=protocol),
               "tensors": pickle.dumps(0, protocol=protocol),
               "pickle": pickle.dumps({"state_dict": {}}, protocol=protocol)}
    members[where] = (pickle.dumps(payload, protocol=protocol) if where != "storages"
                      else pickle.dumps(payload, protocol=protocol) + pickle.dumps([], protocol=protocol))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def object_npy(obj, protocol: int = 3) -> bytes:
    """An object .npy (like landmark_embedding.npy) whose pickle holds `obj`."""
    from numpy.lib import format as npy_format

    array = np.empty((), dtype=object)
    array[()] = obj
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": "|O", "fortran_order": False, "shape": ()})
    pickle.dump(array, buffer, protocol=protocol)
    return buffer.getvalue()


def object_npz(obj, protocol: int = 3) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("mean.npy", object_npy(obj, protocol))
        archive.writestr("tex_dir.npy", object_npy(obj, protocol))
    return buffer.getvalue()


def tensor_from_bytes(embedded: bytes):
    """What pickling a torch tensor inside numpy writes: `torch.storage._load_from_bytes(embedded)`."""

    class Embedded:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (embedded,)

    return Embedded()


def legacy_storage_declaring(numel: int) -> bytes:
    """A legacy torch file whose one tensor's storage claims `numel` float32 elements (it holds none)."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    class Marker:
        pass

    storage = Marker()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is storage:
                return ("storage", torch.FloatStorage, "0", "cpu", numel, None)
            return None

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (storage, 0, (numel,), (1,), False, OrderedDict())

    data = io.BytesIO()
    Pickler(data, protocol=2).dump({"w": Tensor()})
    head = b"".join(pickle.dumps(v, protocol=2) for v in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}))
    return head + data.getvalue() + pickle.dumps(["0"], protocol=2)


def deflated_torch_zip(tensor_bytes: int = 8 << 20) -> bytes:
    """A torch zip whose tensor data is deflated: a small file that decompresses to `tensor_bytes`."""
    plain = zipfile.ZipFile(io.BytesIO(torch_zip({"w": torch.zeros(tensor_bytes // 4)})))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info in plain.infolist():
            archive.writestr(info.filename, plain.read(info), compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- amplified allocations: a few bytes of pickle per call, each call allowed, all of them together not ------------

def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def repeated_reduce(module: str, name: str, arguments: bytes, count: int) -> bytes:
    """A protocol-2 pickle: the global and its argument tuple (`arguments`: opcodes pushing it) memoised once,
    then `count` x `BINGET BINGET REDUCE` appended to a list (5 bytes per call)."""
    head = b"\x80\x02" + _global(module, name) + b"q\x000" + arguments + b"q\x010"
    return head + b"]q\x02(" + b"h\x00h\x01R" * count + b"e."


def repeated_calls(count: int = 3000, size: int = 1 << 20) -> bytes:
    """3,000 x `bytearray(1 MiB)` in 15 KB."""
    return repeated_reduce("builtins", "bytearray", b"J" + size.to_bytes(4, "little") + b"\x85", count)


def repeated_embedded_tensors(embedded: bytes, count: int) -> bytes:
    """`count` x `torch.storage._load_from_bytes(<embedded>)` (how numpy pickles hold torch tensors), one copy of
    the embedded file."""
    return repeated_reduce("torch.storage", "_load_from_bytes",
                           b"B" + len(embedded).to_bytes(4, "little") + embedded + b"\x85", count)


def repeated_lists(count: int = 200, size: int = 1 << 20) -> bytes:
    """`bytearray(size)` once, then `count` x `list(<it>)` (each 1M references: 8 MiB) in about 1 KB."""
    head = (b"\x80\x02" + _global("builtins", "list") + b"q\x000" + _global("builtins", "bytearray") +
            b"J" + size.to_bytes(4, "little") + b"\x85R\x85q\x010")
    return head + b"]q\x02(" + b"h\x00h\x01R" * count + b"e."


def torch_zip_with_data_pkl(data_pkl: bytes) -> bytes:
    """torch's zip layout (as `torch.save` writes it) whose `data.pkl` is `data_pkl`."""
    source = zipfile.ZipFile(io.BytesIO(torch_zip({})))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for info in source.infolist():
            archive.writestr(info.filename, data_pkl if info.filename.endswith("data.pkl") else source.read(info))
    return out.getvalue()


def object_npy_with_pickle(pickled: bytes) -> bytes:
    """An object .npy (landmark_embedding.npy's format) whose pickle is `pickled`."""
    from numpy.lib import format as npy_format

    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": "|O", "fortran_order": False, "shape": ()})
    return buffer.getvalue() + pickled


def repeated_newobj(count: int = 200, size: int = 1 << 20) -> bytes:
    """`bytearray(size)` once, then `count` x NEWOBJ `tuple.__new__(tuple, <it>)` (8 MiB each): the class itself
    is called, not the constructor the allow-list checks."""
    head = (b"\x80\x02" + _global("builtins", "tuple") + b"q\x000" + _global("builtins", "bytearray") +
            b"J" + size.to_bytes(4, "little") + b"\x85R\x85q\x010")
    return head + b"]q\x02(" + b"h\x00h\x01\x81" * count + b"e."


def shared_references(count: int = 10_000, size: int = 100_000) -> bytes:
    """No call at all: one list of `size` items memoised, then referenced `count` times (BINGET, 2 bytes): a walk
    that copies every reference copies count x size items."""
    inner = b"]q\x00(" + b"N" * size + b"e0"
    return b"\x80\x02" + inner + b"}q\x01X\x01\x00\x00\x00x]q\x02(" + b"h\x00" * count + b"es."
