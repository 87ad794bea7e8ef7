"""Convert `caphuman.ckpt` into one small control-only file.

    python -m caphuman_ext.convert caphuman.ckpt caphuman_capface.safetensors [--half]

Writes CapFace with its identity projections (keys as `CapFace` names them), the CLIP ViT-L/14 vision tower under
`clip_vision.*` (the checkpoint's own, else the one found beside it, in `--clip` or in the Hugging Face cache), and
the architecture as safetensors metadata: later runs need this one file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from safe_files.weights import WeightFileError, load_state_dict

from .checkpoint import CONFIG_METADATA_KEY, CheckpointError, clip_vision_from_state, split_capface_state
from .config import ConfigError, derive_config


def convert(source: str | Path, target: str | Path, half: bool = False, clip_search=None) -> dict[str, int]:
    """Write the control-only file; returns how many tensors went into each part.

    `clip_search` (a `preprocessors.identity.clip_files.ClipSearch`, or a `ClipVisionFile` to use as it is): where
    to find the CLIP vision tower when the checkpoint holds none; the tower found is stored in the converted file.
    """
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
    if not vision and clip_search is not None:
        from preprocessors.identity.clip_files import ClipVisionFile, find_clip_vision, read_clip_vision

        found = clip_search if isinstance(clip_search, ClipVisionFile) else find_clip_vision(clip_search)
        vision = read_clip_vision(found) if found is not None else {}
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
    parser.add_argument("--clip", type=Path, help="a CLIP ViT-L/14 file to store when the checkpoint has none "
                        "(sd-webui-controlnet's clip_vitl.pth, or the hub's model.safetensors / pytorch_model.bin)")
    args = parser.parse_args(argv)
    from preprocessors.identity.clip_files import ClipSearch, ClipVisionFile

    search = ClipSearch(folders=[Path(args.source).parent, Path(args.target).parent])
    if args.clip is not None:
        search = ClipVisionFile(args.clip, "--clip")
    try:
        counts = convert(args.source, args.target, args.half, search)
    except CheckpointError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {args.target}: {counts['capface']} CapFace tensors, {counts['clip_vision']} CLIP vision tensors")
    if not counts["clip_vision"]:
        print("no CLIP ViT-L/14 vision tower found: the extension will look for it at run time (or pass --clip)")


if __name__ == "__main__":
    main()
