"""A user's first hour on a small card: peak memory and completion, with and without CapHuman.

    python benchmarks/bench_small_cards.py [--cards 6,8,12] [--steps 3] [--json out.json]

Each card is emulated on the device GPU with `torch.cuda.set_per_process_memory_fraction` (the CUDA context, which a
real card also loses, is not counted), and the webui's flags as it would run there: 6 GB with `--medvram` (text
encoder and VAE off the GPU while sampling; CapHuman offloads its models after use), 8 and 12 GB without flags (text
encoder and VAE resident: 0.41 GB held; CapHuman's preprocessing models resident: the real-size networks).

The sequence (each a job with CFG, `--steps` sampling steps per pass: the peak comes with the first steps, where the
graphs are captured): 512² b1; 512² b1 + hires 2× (a second pass at 1024²); 768² b4; the same three with two units;
a face refine pass (a 512² crop, one unit). Variants: plain (no CapHuman), caphuman (kept graphs bounded by the
card's byte budget, `graphs.graph_budget`), caphuman-count (kept graphs bounded by their count only, as before).
Real-size SD1.5 UNet and CapFace (random weights, fp16), A1111's path (`UNetHook`, autocast), the real `Generation`.
The VAE decode is not run.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.webui_like import patch_ldm_like_webui, sd15_capface, sd15_unet  # noqa: E402
from caphuman_ext import UNetHook  # noqa: E402
from caphuman_ext.graphs import graph_budget, release_shared_graphs, shared_graphs  # noqa: E402
from caphuman_ext.lifecycle.generation import Generation, PreparedUnit  # noqa: E402
from caphuman_ext.lifecycle.geometry import full_frame  # noqa: E402
from caphuman_ext.rows import RowPlan, cfg_rows  # noqa: E402

GB = 2**30
TEXT_ENCODER_AND_VAE_GB = 0.41  # CLIP ViT-L/14 text (123 M) + the SD VAE (84 M), fp16
SEQUENCE = [  # (name, size, batch, hires, units)
    ("512² b1", 512, 1, False, 1),
    ("512² b1 + hires 2×", 512, 1, True, 1),
    ("768² b4", 768, 4, False, 1),
    ("512² b1, two units", 512, 1, False, 2),
    ("512² b1 + hires 2×, two units", 512, 1, True, 2),
    ("768² b4, two units", 768, 4, False, 2),
    ("face refine (512² crop)", 512, 1, False, 1),
]
CARDS = {6: "medvram", 8: "none", 12: "none"}


def job(unet, capface, units: int, size: int, batch: int, hires: bool, steps: int, low_vram: bool, dtype) -> None:
    device = torch.device("cuda")
    g = torch.Generator(device=device).manual_seed(size + batch + units)
    text = torch.randn(2 * batch, 77, 768, device=device, dtype=dtype, generator=g)
    generation = None
    if units:
        prepared = []
        for position in range(units):
            clip = torch.randn(1, 257, 1024, device=device, dtype=dtype, generator=g)
            face = torch.randn(1, 1, 512, device=device, dtype=dtype, generator=g)
            capface.to(device)
            with torch.no_grad():
                context = capface.identity_context(clip, face)
            params = SimpleNamespace(strength=1.0, start=0.0, end=1.0, pose_only=0.0)
            prepared.append(PreparedUnit(params, capface, context, position))
        hints = {}

        def render(params, width, height):
            key = (id(params), width, height)
            if key not in hints:
                hints[key] = torch.rand(1, 9, height, width, device=device, generator=g) * 2 - 1
            return hints[key]

        generation = Generation(prepared, render, offload=low_vram)
    try:
        for px, second in [(size, False)] + ([(size * 2, True)] if hires else []):
            latent_hw = (px // 8, px // 8)
            x = torch.randn(2 * batch, 4, *latent_hw, device=device, dtype=dtype, generator=g)
            hook = None
            if generation is not None:
                generation.prepare_pass(full_frame(latent_hw), latent_hw, second)
                hook = UNetHook(unet, generation.engine).install()
            try:
                with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
                    for step in range(steps):
                        if generation is not None:
                            generation.step(step / steps, RowPlan(cfg_rows([1] * batch, batch), step))
                        t = torch.full((2 * batch,), 999.0 - step * 50, device=device)
                        x = x + 0.01 * unet(x, t, context=text)
                torch.cuda.synchronize()
            finally:
                if hook is not None:
                    hook.detach()
                if generation is not None:
                    generation.end_sampling()
    finally:
        if generation is not None:
            generation.close()


def run_card(card_gb: int, variant: str, steps: int, dtype) -> dict:
    flags = CARDS[card_gb]
    low_vram = flags != "none"
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(card_gb * GB / total)
    graphs = shared_graphs()
    graphs.max_bytes = graph_budget(card_gb * GB, low_vram) if variant == "caphuman" else 1 << 62
    held = []
    result = {"card_gb": card_gb, "flags": flags, "variant": variant, "graph_budget_gb":
              graphs.max_bytes / GB if variant == "caphuman" else None, "jobs": []}
    try:
        unet = sd15_unet("cuda", dtype)
        if not low_vram:
            held.append(torch.empty(int(TEXT_ENCODER_AND_VAE_GB * GB), dtype=torch.uint8, device="cuda"))
        capface = None
        if variant != "plain":
            capface = sd15_capface("cuda", dtype)
            if not low_vram:  # preprocessing models stay resident without offload
                from benchmarks.bench_vram import preprocessing_models

                held.append(preprocessing_models("cuda", dtype))
        torch.cuda.synchronize()
        result["resident_gb"] = torch.cuda.memory_allocated() / GB
    except torch.OutOfMemoryError as error:
        result["load_error"] = str(error).splitlines()[0]
        return result
    for name, size, batch, hires, units in SEQUENCE:
        torch.cuda.reset_peak_memory_stats()
        entry = {"job": name}
        start = time.perf_counter()
        try:
            job(unet, capface, units if capface is not None else 0, size, batch, hires, steps, low_vram, dtype)
            entry["completed"] = True
        except torch.OutOfMemoryError as error:
            entry["completed"] = False
            entry["error"] = str(error).splitlines()[0][:200]
            graphs.drop("out of memory in sampling")  # what the job's sampling wrapper does
            gc.collect()
            torch.cuda.empty_cache()
        torch.cuda.synchronize()
        entry["seconds"] = time.perf_counter() - start
        entry["peak_allocated_gb"] = torch.cuda.max_memory_allocated() / GB
        entry["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / GB
        entry["kept_graphs"] = len(graphs.calls)
        entry["kept_graph_gb"] = graphs.kept_bytes / GB
        entry["graph_sizes_gb"] = [getattr(call, "nbytes", 0) / GB for call in graphs.calls.values()]
        result["jobs"].append(entry)
        print(card_gb, variant, json.dumps(entry), flush=True)
    result["completed_all"] = all(entry["completed"] for entry in result["jobs"])
    result["peak_allocated_gb"] = max(entry["peak_allocated_gb"] for entry in result["jobs"])
    result["drops"] = list(graphs.drops)
    del unet, capface, held
    release_shared_graphs()
    graphs.drops.clear()
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cards", default="6,8,12")
    parser.add_argument("--variants", default="plain,caphuman,caphuman-count")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    patch_ldm_like_webui()
    dtype = torch.float16
    out = {"info": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "date": time.strftime("%Y-%m-%d"), "steps_per_pass": args.steps,
                    "sequence": [s[0] for s in SEQUENCE], "cards": {str(k): v for k, v in CARDS.items()}},
           "runs": []}
    for card in (int(c) for c in args.cards.split(",")):
        for variant in args.variants.split(","):
            out["runs"].append(run_card(card, variant, args.steps, dtype))
            if args.json:
                Path(args.json).write_text(json.dumps(out, indent=1))
    print(json.dumps([{k: r.get(k) for k in ("card_gb", "variant", "completed_all", "peak_allocated_gb")}
                      for r in out["runs"]], indent=1))


if __name__ == "__main__":
    main()
