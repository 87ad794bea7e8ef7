"""Convert `caphuman.ckpt` into one small control-only file.

    python -m caphuman_ext.convert caphuman.ckpt caphuman_capface.safetensors [--half]

Writes CapFace with its identity projections (keys as `CapFace` names them), the CLIP vision tower under
`clip_vision.*` when the checkpoint has one, and the architecture as safetensors metadata.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .checkpoint import CONFIG_METADATA_KEY, CheckpointError, clip_vision_from_state, split_capface_state
from .config import ConfigError, derive_config
from .safe_load import WeightFileError, load_state_dict


def convert(source: str | Path, target: str | Path, half: bool = False) -> dict[str, int]:
    """Write the control-only file; returns how many tensors went into each part."""
    source, target = Path(source), Path(target)
    try:
        state, _ = load_state_dict(source)
    except WeightFileError as error:
        raise CheckpointError(str(error)) from error
    capface = split_capface_state(state, source.name)
    try:
        config = derive_config(capface)
    except (ConfigError, IndexError) as error:
        raise CheckpointError(f"{source.name}: cannot read the CapFace architecture from its weights: {error}") from error
    vision = clip_vision_from_state(state) or {}
    out = dict(capface)
    out.update({f"clip_vision.{k}": v for k, v in vision.items()})
    dtype = torch.float16 if half else None
    out = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous() for k, v in out.items()}
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(target), metadata={CONFIG_METADATA_KEY: json.dumps(config.to_dict()),
                                          "format": "pt", "source": source.name})
    return {"capface": len(capface), "clip_vision": len(vision)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m caphuman_ext.convert", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="caphuman.ckpt (Lightning checkpoint) or another CapHuman weight file")
    parser.add_argument("target", help="output .safetensors")
    parser.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    args = parser.parse_args(argv)
    try:
        counts = convert(args.source, args.target, args.half)
    except CheckpointError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {args.target}: {counts['capface']} CapFace tensors, {counts['clip_vision']} CLIP vision tensors")


if __name__ == "__main__":
    main()
