"""Load CapFace from `caphuman.ckpt` or from the converter's control-only file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from safe_files.rng_guard import rng_untouched
from safe_files.weights import WeightFileError, load_state_dict

from .capface import CapFace
from .config import CapFaceConfig, ConfigError, derive_config

CONTROL_PREFIX = "control_model."
PROJECTION_PREFIXES = ("id_linear.", "img_linear.")
CLIP_VISION_PREFIXES = ("control_cond_stage_model.transformer.", "clip_vision.")
CONFIG_METADATA_KEY = "caphuman_capface_config"


class CheckpointError(ValueError):
    """The file is not a usable CapHuman checkpoint; the message names the file and what was expected."""


def _describe_other(state: Mapping[str, torch.Tensor]) -> str:
    """A guess at what a non-CapHuman file is, for the error message."""
    keys = list(state)
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "a Stable Diffusion checkpoint (it has a UNet but no CapFace)"
    if any(k.startswith("conditioner.") or "label_emb" in k for k in keys):
        return "an SDXL checkpoint or ControlNet"
    if any(k.endswith("input_hint_block.0.weight") for k in keys):
        return "a plain ControlNet (no identity projections, no head mask)"
    if any(k.startswith(("encoder.", "decoder.")) for k in keys):
        return "a VAE"
    return f"not a CapHuman file ({len(keys)} tensors, e.g. {keys[:3]})"


def split_capface_state(state: Mapping[str, torch.Tensor], name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The CapFace part of a checkpoint, keyed as `CapFace` names its parameters."""
    if any(k.startswith(CONTROL_PREFIX) for k in state):
        capface = {k[len(CONTROL_PREFIX):]: v for k, v in state.items() if k.startswith(CONTROL_PREFIX)}
        capface.update({k: v for k, v in state.items() if k.startswith(PROJECTION_PREFIXES)})
    else:
        capface = {k: v for k, v in state.items() if not k.startswith(CLIP_VISION_PREFIXES)}
    required = ("input_hint_block.0.weight", "mask_predict.0.weight", "id_linear.weight", "img_linear.weight")
    missing = [k for k in required if k not in capface]
    if missing:
        raise CheckpointError(
            f"{name}: this is {_describe_other(state)}; expected a CapHuman checkpoint (caphuman.ckpt with "
            f"'control_model.*', 'id_linear.*', 'img_linear.*', or its converted CapFace file). Missing: {missing}")
    return capface


_HEAD_FIELDS = ("num_heads", "num_head_channels")  # the only fields weights do not determine


def _config_from_metadata(metadata: Mapping[str, str], state: Mapping[str, torch.Tensor],
                          name: str) -> CapFaceConfig | None:
    """The converter's recorded config, validated and checked against the weights (which it must describe)."""
    if CONFIG_METADATA_KEY not in metadata:
        return None
    try:
        config = CapFaceConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
        derived = derive_config(state, config.num_heads, config.num_head_channels)
    except (ValueError, TypeError, IndexError, RecursionError) as error:
        raise CheckpointError(f"{name}: unusable '{CONFIG_METADATA_KEY}' metadata or weights: {error}") from error
    if derived != config:
        differ = [k for k, v in config.to_dict().items() if v != derived.to_dict()[k]]
        raise CheckpointError(f"{name}: the architecture in its metadata does not match its weights ({differ})")
    return config


def capface_from_state_dict(state: Mapping[str, torch.Tensor], config: CapFaceConfig | None = None,
                            name: str = "checkpoint") -> CapFace:
    """Build CapFace for `state` (already split) and load it strictly."""
    try:
        config = config or derive_config(state)
    except (ConfigError, IndexError) as error:
        raise CheckpointError(f"{name}: cannot read the CapFace architecture from its weights: {error}") from error
    with torch.device("meta"):
        model = CapFace(config)
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if unexpected or missing or wrong:
        details = "; ".join(filter(None, [
            f"unexpected {unexpected[:5]}" if unexpected else "",
            f"missing {missing[:5]}" if missing else "",
            f"mismatched shapes {wrong[:3]}" if wrong else "",
        ]))
        raise CheckpointError(f"{name}: weights do not fit the CapFace architecture {config.to_dict()}: {details}")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


@rng_untouched()
def load_capface(path: str | Path, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> CapFace:
    """Load CapFace (with its identity projections) from `caphuman.ckpt` or a converted control-only file.

    Pickled files are read without executing code. `device`/`dtype` default to CPU and the file's dtype.
    """
    path = Path(path)
    try:
        state, metadata = load_state_dict(path)
    except WeightFileError as error:
        raise CheckpointError(str(error)) from error
    capface_state = split_capface_state(state, path.name)
    model = capface_from_state_dict(capface_state, _config_from_metadata(metadata, capface_state, path.name),
                                    path.name)
    return model.to(device=device, dtype=dtype)


def read_clip_vision_state_dict(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The CLIP ViT-L/14 vision tower stored with CapHuman, keyed as transformers' `CLIPVisionModel`
    (`vision_model.*`); None when the file holds none."""
    path = Path(path)
    try:
        state, _ = load_state_dict(path)
    except WeightFileError as error:
        raise CheckpointError(str(error)) from error
    return clip_vision_from_state(state)


def clip_vision_from_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Extract the CLIP vision tower from an already-read checkpoint state."""
    for prefix in CLIP_VISION_PREFIXES:
        vision = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if vision:
            return vision
    return None
