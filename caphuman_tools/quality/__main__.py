"""python -m caphuman_tools.quality --api URL --identities DIR --poses DIR --prompts FILE [options]

Generates identities × prompts × head conditions × seeds × strengths × pose-only phases × samplers × step counts
through a running webui's API (started with --api) and writes OUT/scores.csv, OUT/summary.md and OUT/summary.png.
Rerun the same command to resume: rows already in the CSV are skipped, failed ones retried.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from preprocessors.head.codes import parse_modes

from .protocol import ProtocolError
from .runner import RunConfig, run
from .webui_client import WebuiError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m caphuman_tools.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", required=True, help="the webui's address, e.g. http://127.0.0.1:7860")
    p.add_argument("--identities", required=True, type=Path,
                   help="folder: one image per person, or one subfolder of photos per person")
    p.add_argument("--poses", required=True, type=Path,
                   help="folder of head conditions: pose photos, and/or .json files of unit fields (sliders)")
    p.add_argument("--prompts", required=True, type=Path, help="text file, one prompt per line ('#' = comment)")
    p.add_argument("--out", type=Path, default=Path("caphuman_quality"), help="results folder (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="fixed seeds (default: 0)")
    p.add_argument("--steps", type=int, nargs="+", default=[25], help="one or more step counts to compare")
    p.add_argument("--strength", type=float, nargs="+", default=[1.0], help="one or more unit strengths to compare")
    p.add_argument("--pose-only", type=float, nargs="+", default=[0.0],
                   help="one or more pose-only phases (fraction of sampling with the identity off)")
    p.add_argument("--modes", default="all", help="what the pose photos control (default: all = position, pose, "
                                                  "expression, lighting)")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--cfg-scale", type=float, default=7.5)
    p.add_argument("--sampler", nargs="+", default=[""],
                   help="one or more sampler names to compare, as the webui lists them (default: the webui's)")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--model", default="", help="CapHuman model name as the webui lists it (default: the first)")
    p.add_argument("--score", choices=("api", "local"), default="api",
                   help="score through the webui's POST /caphuman/v1/score, or here with the models in --models")
    p.add_argument("--models", type=Path, nargs="*", default=[],
                   help="folders holding the CapHuman model files, for --score local")
    p.add_argument("--auth", default=None, help="user:password when the webui runs with --api-auth")
    p.add_argument("--limit", type=int, default=None, help="generate at most this many new images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        modes = list(parse_modes(args.modes))
    except ValueError as error:
        print(f"--modes: {error}", file=sys.stderr)
        return 2
    config = RunConfig(api=args.api, identities=args.identities, poses=args.poses, prompts=args.prompts,
                       out=args.out, seeds=args.seeds, steps=args.steps, strengths=args.strength,
                       pose_only=args.pose_only, modes=modes, width=args.width, height=args.height,
                       cfg_scale=args.cfg_scale, samplers=args.sampler, negative_prompt=args.negative_prompt,
                       model=args.model, scoring=args.score, models=args.models, auth=args.auth, limit=args.limit,
                       progress=not args.no_progress)
    try:
        result = run(config)
    except (ProtocolError, WebuiError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{result.generated} new images, {result.skipped} already done, {result.failed} failed; "
          f"table: {result.table}; summary: {result.summary}")
    return 0 if result.failed == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
