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
