"""Read weight files without executing pickled code.

`.safetensors` through safetensors; `.ckpt/.pth/.pt` through `torch.serialization.load(weights_only=True)`. Lightning checkpoints
may also pickle trainer objects (callback states, paths, numpy scalars) that the weights-only unpickler refuses;
those are read with a restricted unpickler that rebuilds tensors and plain containers and replaces every other
class by an inert placeholder — nothing from the file is ever called.
"""

from __future__ import annotations

import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


class WeightFileError(RuntimeError):
    """A weight file cannot be read (missing, truncated, not a weight file)."""


class _Placeholder:
    """Stands in for any class the restricted unpickler will not import."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _placeholder_class(module: str, name: str) -> type:
    return type(name, (_Placeholder,), {"__module__": f"unloaded.{module}"})


_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes",
                  "bytearray", "slice", "range", "object"}
_SAFE_TORCH = {
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("collections", "OrderedDict"),
    ("torch", "Size"), ("copyreg", "_reconstructor"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(__import__("builtins"), name)
        if (module, name) in _SAFE_TORCH:
            return getattr(__import__(module, fromlist=[name]), name)
        if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
            return getattr(torch, name)
        return _placeholder_class(module, name)


_restricted_pickle = types.SimpleNamespace(Unpickler=_RestrictedUnpickler, load=pickle.load, __name__="restricted")


def _torch_load(path: Path, restricted: bool) -> Any:
    # torch.serialization.load, not torch.load: the webui replaces torch.load with a checker of its own that returns
    # None for files it does not know; weights_only / our restricted unpickler already guarantee no code runs.
    kwargs: dict[str, Any] = {"map_location": "cpu"}
    if restricted:
        kwargs.update(weights_only=False, pickle_module=_restricted_pickle)
    else:
        kwargs["weights_only"] = True
    if zipfile.is_zipfile(path):
        kwargs["mmap"] = True
    return torch.serialization.load(path, **kwargs)


def load_pickled_weights(path: str | Path) -> Any:
    """`torch.load` a `.ckpt/.pth/.pt/.tar` without running its code; memory-mapped when possible."""
    path = Path(path)
    try:
        return _torch_load(path, restricted=False)
    except pickle.UnpicklingError:
        pass  # trainer objects the weights-only loader refuses: read again with placeholders for them
    except Exception as error:  # noqa: BLE001 - turned into a readable message below
        raise WeightFileError(f"{path.name}: cannot read it as a PyTorch weight file ({error}). "
                              "The file may be truncated or not a checkpoint: download it again.") from error
    try:
        return _torch_load(path, restricted=True)
    except Exception as error:  # noqa: BLE001
        raise WeightFileError(f"{path.name}: cannot read it as a PyTorch weight file ({error}).") from error


def load_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a weight file as a flat dict, plus safetensors metadata (empty for pickles).

    A Lightning checkpoint's `state_dict` entry is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"{path}: file not found")
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                metadata = dict(handle.metadata() or {})
                return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
        except Exception as error:  # noqa: BLE001
            raise WeightFileError(f"{path.name}: cannot read it as safetensors ({error}). The file may be "
                                  "truncated: download it again.") from error
    data = load_pickled_weights(path)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise WeightFileError(f"{path.name}: expected a state dict, found {type(data).__name__}")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}, {}
