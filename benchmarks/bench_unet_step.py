"""Per-step cost of CapHuman in a webui-like SD1.5 sampling step (CFG on, fp16, SDPA), on a CUDA GPU.

Variants, timed interleaved (A B C ... A B C ...), medians:
  bare      the UNet alone
  reference CapFace the reference way: every CFG row, identity projections, hint encoder and mask resizes each step
  eager     our hook without CUDA graphs or stream overlap (rows shared between cond and uncond, per-hint work
            cached)
  graph     + the CapFace pass replayed as a CUDA graph
  shipped   + that pass on a side stream, overlapping the UNet's input blocks (our hook as shipped)
  two       two units, as shipped
Eager wall time is what the webui feels; GPU time is the same step replayed as one CUDA graph (CUDA events).

    python benchmarks/bench_unet_step.py [--iters 60] [--sizes 512,768] [--batches 1,4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import caphuman_ext  # noqa: E402
from benchmarks.webui_like import patch_ldm_like_webui, sd15_capface, sd15_unet  # noqa: E402
from caphuman_ext.rows import RowPlan  # noqa: E402

DTYPE = torch.float16


class Step:
    """One sampling step of one variant: a callable plus what it needs."""

    def __init__(self, name, unet, units, batch, latent, row_sharing=True, graphs=True, reference=False,
                 overlap=True):
        self.name, self.unet, self.batch, self.reference = name, unet, batch, reference
        rows = 2 * batch
        g = torch.Generator(device="cuda").manual_seed(0)
        self.x = torch.randn(batch, 4, latent, latent, device="cuda", generator=g).to(DTYPE).repeat(2, 1, 1, 1)
        self.t = torch.full((rows,), 500.0, device="cuda", dtype=DTYPE)
        self.text = torch.randn(rows, 77, 768, device="cuda", generator=g).to(DTYPE)
        self.units = units  # list of (capface, hint, clip, face)
        self.controls = [caphuman_ext.CapFaceControl(c, hint=h, context=c.identity_context(clip, face))
                         for c, h, clip, face in units]
        sources = list(range(batch)) * 2 if row_sharing else None
        rows_plan = None if sources is None else RowPlan.fixed(sources)
        self.hook = caphuman_ext.hook_unet(unet, self.controls, rows=rows_plan, cuda_graphs=graphs,
                                           overlap=overlap) if units else None

    def __call__(self):
        if self.reference:  # recompute everything per step, on every row
            for control, (capface, hint, clip, face) in zip(self.controls, self.units):
                control.context = capface.identity_context(clip, face)
                control.hint = hint.clone()
        return self.unet(self.x, self.t, context=self.text)

    def __enter__(self):
        if self.hook is not None:
            self.hook.install()
        return self

    def __exit__(self, *exc):
        if self.hook is not None:
            self.hook.detach()  # keeps its captured graphs for the next step of this variant


def eager_ms(step: Step) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    with step:
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def capture(step: Step):
    """The whole step (UNet + hook, eager CapFace inside) as one CUDA graph."""
    graphs = step.hook.graphs if step.hook is not None else None
    if step.hook is not None:
        step.hook.graphs = None  # no nested capture
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), step:
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with step:
        with torch.cuda.graph(graph):
            step()
    if step.hook is not None:
        step.hook.graphs = graphs
    return graph


def gpu_ms(graph) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def kernel_count(step: Step) -> int:
    from torch.profiler import ProfilerActivity, profile

    with step:
        step()  # warm (captures our graph if any)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


def bench(size: int, batch: int, iters: int, unet, capfaces) -> dict:
    latent = size // 8
    g = torch.Generator(device="cuda").manual_seed(1)

    def unit(capface):
        hint = torch.rand(1, 9, size, size, device="cuda", generator=g).to(DTYPE) * 2 - 1
        clip = torch.randn(1, 257, 1024, device="cuda", generator=g).to(DTYPE)
        face = torch.nn.functional.normalize(torch.randn(1, 1, 512, device="cuda", generator=g), dim=-1).to(DTYPE)
        return capface, hint, clip, face

    one, two = unit(capfaces[0]), unit(capfaces[1])
    steps = [
        Step("bare", unet, [], batch, latent),
        Step("reference", unet, [one], batch, latent, row_sharing=False, graphs=False, reference=True,
             overlap=False),
        Step("eager", unet, [one], batch, latent, graphs=False, overlap=False),
        Step("graph", unet, [one], batch, latent, overlap=False),
        Step("shipped", unet, [one], batch, latent),
        Step("two", unet, [one, two], batch, latent),
    ]
    with torch.no_grad(), torch.autocast("cuda", dtype=DTYPE):
        for step in steps:  # warm-up, our graphs captured
            for _ in range(3):
                eager_ms(step)
        eager = {s.name: [] for s in steps}
        for _ in range(iters):
            for step in steps:
                eager[step.name].append(eager_ms(step))
        graphs = {s.name: capture(s) for s in steps}
        gpu = {s.name: [] for s in steps}
        for _ in range(iters):
            for step in steps:
                gpu[step.name].append(gpu_ms(graphs[step.name]))
        kernels = {s.name: kernel_count(s) for s in steps}
        del graphs
    row = {"size": size, "batch": batch}
    for name in eager:
        row[name] = {"eager_ms": statistics.median(eager[name]), "gpu_ms": statistics.median(gpu[name]),
                     "kernels": kernels[name]}
    for name in ("reference", "eager", "graph", "shipped", "two"):
        for kind in ("eager_ms", "gpu_ms"):
            row[name][f"{kind}_overhead"] = row[name][kind] / row["bare"][kind] - 1
    return row


def check_equal(unet, capface, size: int = 512) -> float:
    """Shipped (CUDA graph) vs eager CapFace outputs of one step: max |Δeps| (fp16 noise expected)."""
    latent = size // 8
    g = torch.Generator(device="cuda").manual_seed(2)
    hint = torch.rand(1, 9, size, size, device="cuda", generator=g).to(DTYPE)
    ctx = capface.identity_context(torch.randn(1, 257, 1024, device="cuda", dtype=DTYPE),
                                   torch.randn(1, 1, 512, device="cuda", dtype=DTYPE))
    x = torch.randn(1, 4, latent, latent, device="cuda", generator=g).to(DTYPE).repeat(2, 1, 1, 1)
    text = torch.randn(2, 77, 768, device="cuda", generator=g).to(DTYPE)
    outs = []
    for graphs in (False, True):
        control = caphuman_ext.CapFaceControl(capface, hint=hint, context=ctx)
        with torch.no_grad(), torch.autocast("cuda", dtype=DTYPE), \
                caphuman_ext.hook_unet(unet, [control], rows=RowPlan.fixed([0, 0]), cuda_graphs=graphs) as hook:
            for t in (900.0, 500.0, 100.0):  # replayed with new timesteps
                eps = unet(x, torch.full((2,), t, device="cuda", dtype=DTYPE), context=text)
            assert not graphs or hook.graphs.calls, hook.graphs.disabled_reason
        outs.append(eps.float())
    return (outs[0] - outs[1]).abs().max().item()


def vram(unet, capface, size: int = 512, batch: int = 1) -> dict:
    """Resident bytes of a CapFace and the extra peak of a step with one unit over a bare step."""
    latent = size // 8
    resident = sum(p.numel() * p.element_size() for p in capface.parameters())
    hint = torch.rand(1, 9, size, size, device="cuda", dtype=DTYPE)
    ctx = capface.identity_context(torch.randn(1, 257, 1024, device="cuda", dtype=DTYPE),
                                   torch.randn(1, 1, 512, device="cuda", dtype=DTYPE))
    x = torch.randn(2 * batch, 4, latent, latent, device="cuda", dtype=DTYPE)
    t = torch.full((2 * batch,), 500.0, device="cuda", dtype=DTYPE)
    text = torch.randn(2 * batch, 77, 768, device="cuda", dtype=DTYPE)
    peaks = {}
    for name in ("bare", "unit"):
        control = caphuman_ext.CapFaceControl(capface, hint=hint, context=ctx)
        control.active = name == "unit"
        with torch.no_grad(), torch.autocast("cuda", dtype=DTYPE), \
                caphuman_ext.hook_unet(unet, [control], rows=RowPlan.fixed(list(range(batch)) * 2)):
            unet(x, t, context=text)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            for _ in range(3):
                unet(x, t, context=text)
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated() - base
    return {"capface_resident_gb": resident / 2**30, "extra_peak_gb": (peaks["unit"] - peaks["bare"]) / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--sizes", default="512,768")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--json")
    parser.add_argument("--plot", help="write a PNG of step time vs resolution")
    args = parser.parse_args()
    patch_ldm_like_webui()
    unet = sd15_unet("cuda", DTYPE)
    capfaces = [sd15_capface("cuda", DTYPE, seed=1), sd15_capface("cuda", DTYPE, seed=2)]
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "graph_vs_eager_max_abs_eps": check_equal(unet, capfaces[0])}
    info["vram_512_b1"] = vram(unet, capfaces[0])
    print(info)
    rows = []
    print(f"{'size':>5} {'batch':>5} | {'variant':>9} | {'eager ms':>9} {'ovh':>6} | {'GPU ms':>8} {'ovh':>6} | kernels")
    for size in map(int, args.sizes.split(",")):
        for batch in map(int, args.batches.split(",")):
            row = bench(size, batch, args.iters, unet, capfaces)
            rows.append(row)
            for name in ("bare", "reference", "eager", "graph", "shipped", "two"):
                r = row[name]
                print(f"{size:>5} {batch:>5} | {name:>9} | {r['eager_ms']:9.2f} {r.get('eager_ms_overhead', 0):6.2f} | "
                      f"{r['gpu_ms']:8.2f} {r.get('gpu_ms_overhead', 0):6.2f} | {r['kernels']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    if args.plot:
        plot(rows, args.plot, info)


def plot(rows: list[dict], path: str, info: dict) -> None:
    """Eager step time vs resolution, one line per variant and batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ("eager_ms", "gpu_ms")):
        for batch in sorted({r["batch"] for r in rows}):
            sel = [r for r in rows if r["batch"] == batch]
            for name, style in (("bare", "k-"), ("reference", "r--"), ("shipped", "g-"), ("two", "b:")):
                ax.plot([r["size"] for r in sel], [r[name][kind] for r in sel], style,
                        marker="o" if batch == 1 else "s", label=f"{name} b{batch}")
        ax.set_xlabel("resolution (px, square)")
        ax.set_ylabel(f"{'eager wall' if kind == 'eager_ms' else 'GPU'} ms per step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"CapHuman step time, {info['gpu']}, torch {info['torch']}, fp16 CFG")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
