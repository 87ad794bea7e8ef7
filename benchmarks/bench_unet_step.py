"""Per-step cost of CapHuman in a webui-like SD1.5 sampling step (CFG on, fp16, SDPA), on a CUDA GPU.

Variants, timed interleaved (A B C ... A B C ...), medians:
  bare      the UNet alone
  reference CapFace the reference way: every CFG row, identity projections, hint encoder and mask resizes each step
  eager     our hook without CUDA graphs or stream overlap (rows shared between cond and uncond, per-hint work
            cached)
  graph     + the CapFace pass replayed as a CUDA graph
  shipped   + that pass on a side stream, overlapping the UNet's input blocks (our hook as shipped)
  two       two units, as shipped
The same UNet step as Forge runs it (benchmarks/forge_like.py: `calc_cond_uncond_batch` with the cond and the uncond
chunk in one call, the control chain's `get_control`, Forge's UNet forward adding `control`, manual cast to fp16 and no
autocast, under `torch.inference_mode()` as Forge samples), CapHuman attached by the real Forge adapter
(`hosts.forge.ForgeHost.attach` on a `Generation`):
  forge-bare   Forge's step, no control (the Forge baseline)
  forge-eager  one unit, engine without CUDA graphs or side stream
  forge        one unit, as shipped (graphs, side stream, the UNet waits before its middle block)
  forge-two    two units, as shipped
Eager wall time is what the webui feels; GPU time is the same step replayed as one CUDA graph (CUDA events).
Overheads: A1111 variants against `bare`, Forge variants against `forge-bare`.

    python benchmarks/bench_unet_step.py [--iters 60] [--sizes 512,768] [--batches 1,4] [--variants ...]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import caphuman_ext  # noqa: E402
from benchmarks.forge_like import ForgeModel, calc_cond_uncond_batch  # noqa: E402
from benchmarks.webui_like import patch_ldm_like_webui, sd15_capface, sd15_unet  # noqa: E402
from caphuman_ext.graphs import GraphCache  # noqa: E402
from caphuman_ext.hosts import forge  # noqa: E402
from caphuman_ext.lifecycle.generation import Generation, PreparedUnit  # noqa: E402
from caphuman_ext.lifecycle.geometry import full_frame  # noqa: E402
from caphuman_ext.rows import RowPlan  # noqa: E402

DTYPE = torch.float16
VARIANTS = ("bare", "reference", "eager", "graph", "shipped", "two", "forge-bare", "forge-eager", "forge", "forge-two")


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
        self.engine = self.hook.engine if self.hook is not None else None
        self.capturing = False
        self.host_ms: list[float] = []
        self.control_ms: list[float] = []

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


class ForgeStep:
    """One Forge UNet step (cond + uncond chunks in one call) of one variant; CapHuman attached as the Forge adapter
    does: a `Generation` with this pass's hints, `ForgeHost.attach` (a clone of the UnetPatcher with our link and
    block modifier), `ForgeHost.attached` (the chain's head) and `Generation.step` as `on_step` calls them."""

    def __init__(self, name, unet, units, batch, latent, graphs=True, overlap=True):
        self.name, self.batch = name, batch
        device = torch.device("cuda")
        self.model = ForgeModel(unet, device)
        sampling = self.model.pristine.model.model_sampling
        g = torch.Generator(device="cuda").manual_seed(0)
        self.sigma = sampling.sigmas[500].expand(batch).clone()
        self.x = torch.randn(batch, 4, latent, latent, device="cuda", generator=g) * self.sigma[0]
        self.cond = torch.randn(batch, 77, 768, device="cuda", generator=g)
        self.uncond = torch.randn(batch, 77, 768, device="cuda", generator=g)
        self.capturing = False
        self.host_ms: list[float] = []
        self.control_ms: list[float] = []  # host time inside the chain's `get_control`
        self.generation = self.engine = None
        self._modes: list = []
        if not units:
            return
        hints = {}
        prepared = []
        for position, (capface, hint, clip, face) in enumerate(units):
            params = SimpleNamespace(strength=1.0, start=0.0, end=1.0, pose_only=0.0, passes="both")
            hints[id(params)] = hint
            with torch.no_grad():
                context = capface.identity_context(clip, face)
            prepared.append(PreparedUnit(params, capface, context, position))
        generation = Generation(prepared, render=lambda params, w, h: hints[id(params)],
                                graphs=GraphCache() if graphs else None)
        generation.engine.graphs = generation.graphs if graphs else None
        generation.engine.overlap = overlap
        with torch.inference_mode():
            generation.prepare_pass(full_frame((latent, latent)), (latent, latent), adopt=forge.HOST.adopt)
            forge.HOST.attach(generation, self.model)
        self.model.pre_run()
        self.generation, self.engine = generation, generation.engine
        link = self.model.forge_objects.unet.controlnet_linked_list
        get_control = link.get_control

        def timed_get_control(*args, **kwargs):
            start = time.perf_counter()
            try:
                return get_control(*args, **kwargs)
            finally:
                self.control_ms.append((time.perf_counter() - start) * 1e3)

        link.get_control = timed_get_control

    def __call__(self):
        if self.generation is not None:  # what `job.on_step` does each step
            forge.HOST.attached(self.generation, self.model)
            self.generation.step(0.5, forge.HOST.step_rows(None))
        return calc_cond_uncond_batch(self.model.forge_objects.unet, self.cond, self.uncond, self.x, self.sigma,
                                      capturing=self.capturing)

    def __enter__(self):
        self._modes = [torch.inference_mode(), torch.autocast("cuda", enabled=False)]  # Forge: no autocast
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)


def eager_ms(step: Step) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    with step:
        step()
    step.host_ms.append((time.perf_counter() - start) * 1e3)  # until the step returned: launch (host) time
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def capture(step: Step):
    """The whole step (UNet + hook, eager CapFace inside) as one CUDA graph."""
    graphs = step.engine.graphs if step.engine is not None else None
    if step.engine is not None:
        step.engine.graphs = None  # no nested capture
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), step:
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    step.capturing = True
    try:
        with step:
            with torch.cuda.graph(graph):
                step()
    finally:
        step.capturing = False
    if step.engine is not None:
        step.engine.graphs = graphs
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


def bench(size: int, batch: int, iters: int, unet, capfaces, variants=VARIANTS) -> dict:
    latent = size // 8
    g = torch.Generator(device="cuda").manual_seed(1)

    def unit(capface):
        hint = torch.rand(1, 9, size, size, device="cuda", generator=g).to(DTYPE) * 2 - 1
        clip = torch.randn(1, 257, 1024, device="cuda", generator=g).to(DTYPE)
        face = torch.nn.functional.normalize(torch.randn(1, 1, 512, device="cuda", generator=g), dim=-1).to(DTYPE)
        return capface, hint, clip, face

    one, two = unit(capfaces[0]), unit(capfaces[1])
    make = {
        "bare": lambda: Step("bare", unet, [], batch, latent),
        "reference": lambda: Step("reference", unet, [one], batch, latent, row_sharing=False, graphs=False,
                                  reference=True, overlap=False),
        "eager": lambda: Step("eager", unet, [one], batch, latent, graphs=False, overlap=False),
        "graph": lambda: Step("graph", unet, [one], batch, latent, overlap=False),
        "shipped": lambda: Step("shipped", unet, [one], batch, latent),
        "two": lambda: Step("two", unet, [one, two], batch, latent),
        "forge-bare": lambda: ForgeStep("forge-bare", unet, [], batch, latent),
        "forge-eager": lambda: ForgeStep("forge-eager", unet, [one], batch, latent, graphs=False, overlap=False),
        "forge": lambda: ForgeStep("forge", unet, [one], batch, latent),
        "forge-two": lambda: ForgeStep("forge-two", unet, [one, two], batch, latent),
    }
    steps = [make[name]() for name in variants]
    with torch.no_grad(), torch.autocast("cuda", dtype=DTYPE):
        for step in steps:  # warm-up, our graphs captured
            for _ in range(3):
                eager_ms(step)
        eager = {s.name: [] for s in steps}
        for _ in range(iters):
            for step in steps:
                eager[step.name].append(eager_ms(step))
        host = {}  # host (launch) time of the timed eager calls, and inside Forge's get_control
        for step in steps:
            host[step.name] = {"host_ms": statistics.median(step.host_ms[-iters:])}
            if step.control_ms:
                host[step.name]["get_control_host_ms"] = statistics.median(step.control_ms[-iters:])
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
    for step in steps:
        row[step.name].update(host[step.name])
    for step in steps:
        base = "forge-bare" if step.name.startswith("forge") else "bare"
        if step.name != base and base in row:
            for kind in ("eager_ms", "gpu_ms"):
                row[step.name][f"{kind}_overhead"] = row[step.name][kind] / row[base][kind] - 1
            # per round (same iteration, interleaved) ratios: cancels drift between rounds
            ratios = [a / b - 1 for a, b in zip(eager[step.name], eager[base], strict=True)]
            row[step.name]["eager_overhead_paired_median"] = statistics.median(ratios)
        if isinstance(step, ForgeStep) and step.generation is not None:
            graphs = step.generation.graphs
            row[step.name]["graph_captures"] = graphs.captures if graphs is not None else 0
            row[step.name]["graphs_disabled"] = graphs.disabled_reason if graphs is not None else None
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
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-checks", action="store_true", help="skip the graph-vs-eager check and the VRAM probe")
    args = parser.parse_args()
    variants = args.variants.split(",")
    patch_ldm_like_webui()
    unet = sd15_unet("cuda", DTYPE)
    capfaces = [sd15_capface("cuda", DTYPE, seed=1), sd15_capface("cuda", DTYPE, seed=2)]
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "iters": args.iters, "variants": variants}
    if not args.no_checks:
        info["graph_vs_eager_max_abs_eps"] = check_equal(unet, capfaces[0])
        info["vram_512_b1"] = vram(unet, capfaces[0])
    print(json.dumps(info))
    rows = []
    print(f"{'size':>5} {'batch':>5} | {'variant':>9} | {'eager ms':>9} {'ovh':>6} | {'GPU ms':>8} {'ovh':>6} | kernels")
    for size in map(int, args.sizes.split(",")):
        for batch in map(int, args.batches.split(",")):
            row = bench(size, batch, args.iters, unet, capfaces, variants)
            rows.append(row)
            for name in variants:
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
            for name, style in (("bare", "k-"), ("reference", "r--"), ("shipped", "g-"), ("two", "b:"),
                                ("forge-bare", "k-."), ("forge", "m-"), ("forge-two", "c:")):
                if name not in sel[0]:
                    continue
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
