"""Whole generations as the webui (A1111 v1.10) runs them, with and without CapHuman units, on a CUDA GPU.

What one generation is here (modelled on modules/sd_samplers_kdiffusion.py, sd_samplers_cfg_denoiser.py and
k-diffusion's samplers, written out below; the VAE decode is left out: it is the same for every variant):
  * sigmas on the device; x = noise * sigma_max; 20 steps of DPM++ 2M Karras or Euler a (k-diffusion's loops:
    DPM++ 2M tests `sigmas[i + 1] == 0` and Euler a `sigmas[i + 1] > 0` and Python's `min` on tensors, each a host
    sync per step, as in the webui);
  * per step the CFGDenoiser: x_in/sigma_in built row by row (cond rows, then the uncond rows), the
    `cfg_denoiser_callback` (CapHuman's `on_cfg_denoiser`: `follow` + `step(progress, RowPlan)`), ONE UNet call on
    2 x batch rows through a CompVisDenoiser (c_in scaling, sigma -> t by the log-sigma table), `combine_denoised`
    (CFG 7, per image), the preview latent `get_pred_x0` + `store_latent` (the live preview itself is decoded by the
    progress thread when the browser polls, not in this loop: not modelled), `state.sampling_step` updates;
  * after sampling `devices.test_for_nans(samples, "unet")` (reads one element: the generation's final sync).
CapHuman variants run the real `caphuman_ext.lifecycle.Generation` API per generation, as the A1111 adapter does:
`prepare` (identity context from the warm identity cache: two linears), `Generation(...)`, `prepare_pass` (hint
rendered by the warm head cache: the concatenation of its maps), a `UNetHook` on the generation's engine installed
(`A1111Host.attach`), `step(progress, RowPlan.cfg(...))` per step, the hook detached and `end_sampling` when sampling
ends, `close`.

Forge variants run the same k-diffusion loop through Forge Classic's denoiser instead (benchmarks/forge_like.py):
`forge_objects` reset from the pristine UnetPatcher, per step the `cfg_denoiser` callback then `forge_sample` ->
`sampling_function` -> `calc_cond_uncond_batch` (cond and uncond chunks in ONE UNet call, `get_control` through the
control chain, Forge's UNet forward adding `control`, manual cast to fp16, no autocast), CFG, the preview stored; all
under `torch.inference_mode()` as Forge processes. CapHuman is attached by the real Forge adapter: `Generation`,
`prepare_pass` with `ForgeHost.adopt`, `ForgeHost.attach` (a clone of the UnetPatcher with our link and block
modifier), per step `ForgeHost.attached` + `Generation.step(progress, None)` (what `job.on_step` does), at the end
`end_sampling` and `close`.

Variants (interleaved: A B C ... A B C ..., medians and quartiles):
  plain        no unit
  one          one unit, as shipped (graphs kept across generations)
  one-before   one unit, graphs captured again each generation with `torch.cuda.graph` (the code before issue 11)
  two          two units (same CapFace, two identities), as shipped
  two-before   two units, graphs per generation (before)
  two-separate two units as shipped but on two CapFace objects sharing weights: two passes instead of one stacked
               pass (how two units ran before they were stacked)
  reference    one unit the reference way: every CFG row, identity projections and hint encoder every step, no
               graphs, no side stream
  forge-plain  Forge's sampling path, no unit (the baseline of the Forge variants)
  forge-one    one unit through Forge's control chain, as shipped
  forge-two    two units through Forge's control chain, as shipped
Overheads: per round, each A1111 variant against `plain`, each Forge variant against `forge-plain`.

    python benchmarks/bench_generation.py [--sizes 512,768] [--batches 1,4] [--dtypes fp16,bf16]
        [--samplers dpmpp_2m_karras,euler_a] [--reps 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.forge_like import ForgeModel, sampling_function  # noqa: E402
from benchmarks.webui_like import patch_ldm_like_webui, sd15_capface, sd15_unet  # noqa: E402
from caphuman_ext.engine import ResidualEngine  # noqa: E402
from caphuman_ext.graphs import GraphCache, release_shared_graphs, shared_graphs  # noqa: E402
from caphuman_ext.hook import UNetHook  # noqa: E402
from caphuman_ext.hosts import forge  # noqa: E402
from caphuman_ext.lifecycle.generation import Generation, PreparedUnit  # noqa: E402
from caphuman_ext.lifecycle.geometry import full_frame  # noqa: E402
from caphuman_ext.rows import RowPlan  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
CFG_SCALE = 7.0


# --- the model wrapper: ldm's DDPM schedule seen through k-diffusion's CompVisDenoiser ---------------------------
class CompVisDenoiser:
    """eps-prediction UNet as a denoiser D(x, sigma) (k-diffusion's CompVisDenoiser over SD's scaled-linear
    schedule); the UNet is called with the timestep interpolated in log-sigma, as the webui does."""

    def __init__(self, unet, device: torch.device) -> None:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, 0)
        self.sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float().to(device)
        self.log_sigmas = self.sigmas.log()
        self.unet = unet

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c_out = -sigma[:, None, None, None]
        c_in = 1 / (sigma**2 + 1) ** 0.5
        eps = self.unet(x * c_in[:, None, None, None], self.sigma_to_t(sigma), context=cond)
        return x + eps * c_out


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, device, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, device=device)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def default_sigmas(model: CompVisDenoiser, n: int) -> torch.Tensor:
    """The model's own discretisation (what Euler a uses with the 'Automatic' schedule)."""
    t_max = len(model.sigmas) - 1
    t = torch.linspace(t_max, 0, n, device=model.sigmas.device)
    sigmas = model.t_to_sigma(t)
    return torch.cat([sigmas, sigmas.new_zeros([1])])


# --- k-diffusion's two samplers, as the webui calls them ----------------------------------------------------------
def sample_dpmpp_2m(model, x, sigmas, callback):
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, i)
        callback(i)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:  # host sync, as in k-diffusion
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised
        else:
            h_last = t - (-sigmas[i - 1].log())
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def sample_euler_ancestral(model, x, sigmas, callback, generator):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, i)
        sigma_from, sigma_to = sigmas[i], sigmas[i + 1]
        sigma_up = min(sigma_to, (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)  # sync
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        callback(i)
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:  # host sync, as in k-diffusion
            x = x + torch.randn(x.shape, device=x.device, generator=generator) * sigma_up
    return x


# --- the webui's CFGDenoiser and one generation -------------------------------------------------------------------
class WebuiState:
    sampling_step = 0
    sampling_steps = 0
    current_latent = None
    interrupted = False


class CFGDenoiser:
    """sd_samplers_cfg_denoiser.CFGDenoiser.forward for one prompt per image, batch_cond_uncond on."""

    def __init__(self, inner: CompVisDenoiser, cond: torch.Tensor, uncond: torch.Tensor, steps: int,
                 on_cfg: Callable[[int, torch.Tensor], None] | None) -> None:
        self.inner, self.cond, self.uncond, self.steps, self.on_cfg = inner, cond, uncond, steps, on_cfg
        self.state = WebuiState()
        self.step = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, i: int) -> torch.Tensor:
        if self.state.interrupted:
            raise RuntimeError("interrupted")
        batch = x.shape[0]
        repeats = [1] * batch
        x_in = torch.cat([torch.stack([x[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [x])
        sigma_in = torch.cat([torch.stack([sigma[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [sigma])
        if self.on_cfg is not None:  # cfg_denoiser_callback
            self.on_cfg(self.step, x_in)
        cond_in = torch.cat([self.cond, self.uncond])
        x_out = self.inner(x_in, sigma_in, cond_in)
        denoised_uncond = x_out[-batch:]
        denoised = torch.clone(denoised_uncond)
        for image in range(batch):
            denoised[image] += (x_out[image] - denoised_uncond[image]) * CFG_SCALE
        preview = torch.cat([x_out[image:image + 1] for image in range(batch)])  # get_pred_x0: denoised cond
        self.state.current_latent = preview  # store_latent (no decode: the progress thread decodes previews)
        self.step += 1
        return denoised

    def callback_state(self, i: int) -> None:
        self.state.sampling_step = i


class ForgeCFGDenoiser:
    """Forge Classic's CFGDenoiser.forward for one prompt per image: the `cfg_denoiser` callback, then
    `forge_sample` (-> `sampling_function`: cond and uncond in one batch, CFG), the preview stored."""

    def __init__(self, model: ForgeModel, cond: torch.Tensor, uncond: torch.Tensor, steps: int,
                 on_cfg: Callable[[int, torch.Tensor], None] | None) -> None:
        self.model, self.cond, self.uncond, self.steps, self.on_cfg = model, cond, uncond, steps, on_cfg
        self.state = WebuiState()
        self.step = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, i: int) -> torch.Tensor:
        if self.state.interrupted:
            raise RuntimeError("interrupted")
        if self.on_cfg is not None:  # cfg_denoiser_callback
            self.on_cfg(self.step, x)
        denoised = sampling_function(self.model.forge_objects.unet, x, sigma, self.uncond, self.cond, CFG_SCALE)
        self.state.current_latent = denoised  # store_latent
        self.step += 1
        return denoised.to(device=x.device, dtype=x.dtype)

    def callback_state(self, i: int) -> None:
        self.state.sampling_step = i


def test_for_nans(x: torch.Tensor) -> None:
    """devices.test_for_nans(samples, "unet"): one element read (a host sync)."""
    if torch.isnan(x[(0,) * x.dim()]):
        raise RuntimeError("A tensor with NaNs was produced in Unet.")


class ReferenceGeneration(Generation):
    """One unit the reference way: every CFG row, identity projections and hint encoder every step, no graphs."""

    def __init__(self, units, render, inputs) -> None:
        super().__init__(units, render)
        self.inputs = inputs  # per unit: (hint, clip tokens, face embedding)
        self.engine = ResidualEngine([], cuda_graphs=False, overlap=False)

    def step(self, progress, plan) -> None:
        super().step(progress, None)
        for unit, control, (hint, clip, face) in zip(self.units, self.controls, self.inputs, strict=True):
            control.context = unit.capface.identity_context(clip, face)
            control.hint = hint.clone()


class Scene:
    """Models, prompts and the cached preprocessing outputs of one (size, batch, dtype)."""

    def __init__(self, unet, capface, size: int, batch: int, dtype: torch.dtype, device: torch.device) -> None:
        self.unet, self.capface, self.size, self.batch, self.dtype, self.device = unet, capface, size, batch, dtype, \
            device
        self.latent_hw = (size // 8, size // 8)
        self.model = CompVisDenoiser(unet, device)
        self.forge_model = ForgeModel(unet, device)  # `p.sd_model` of Forge (its UnetPatcher, BaseModel, sampling)
        # Forge's kept graphs: a webui process is one host or the other; graphs captured under Forge's inference
        # mode hold inference tensors that A1111's sampling (outside inference mode) may not copy into
        self.forge_graphs = GraphCache(max_graphs=4)
        g = torch.Generator(device=device).manual_seed(0)
        self.cond = torch.randn(batch, 77, 768, device=device, generator=g)
        self.uncond = torch.randn(batch, 77, 768, device=device, generator=g)
        # per identity: CLIP tokens and FaceNet embedding (the identity cache), head maps (the head cache)
        self.identities = []
        for _ in range(2):
            clip = torch.randn(1, 257, 1024, device=device, generator=g).to(dtype)
            face = torch.randn(1, 1, 512, device=device, generator=g).to(dtype)
            maps = [torch.rand(1, 3, size, size, device=device, generator=g) * 2 - 1 for _ in range(3)]
            self.identities.append((clip, face, maps))

    def params(self, strength: float = 1.0):
        return SimpleNamespace(strength=strength, start=0.0, end=1.0, pose_only=0.0)

    def prepared(self, count: int, separate: bool = False) -> list[PreparedUnit]:
        """`UnitBuilder.prepare` with the identity cache warm: the identity context from cached encodings.
        separate: the second unit on another CapFace object with the same weights (not stacked with the first)."""
        units = []
        for position in range(count):
            capface = self.capface
            if separate and position == 1:
                capface = self.twin = getattr(self, "twin", None) or copy.copy(self.capface)
            clip, face, _ = self.identities[position]
            with torch.no_grad():
                context = self.capface.identity_context(clip, face)
            params = self.params()
            params.identity = position
            units.append(PreparedUnit(params, capface, context, position))
        return units

    def render(self, params, width: int, height: int) -> torch.Tensor:
        """`UnitBuilder.hint` with the head cache warm: `HeadMaps.hint()` concatenates the cached maps."""
        return torch.cat(self.identities[params.identity][2], 1)


def generation(scene: Scene, variant: str, sampler: str, steps: int = 20, seed: int = 0,
               marks: dict | None = None) -> torch.Tensor:
    """One whole generation; `marks`, when given, gets synchronised timestamps of its phases (profiling only)."""
    if variant.startswith("forge"):
        with torch.inference_mode():  # Forge's process_images
            return forge_generation(scene, variant, sampler, steps, seed, marks)
    device = scene.device

    def mark(name: str) -> None:
        if marks is not None:
            torch.cuda.synchronize(device)
            marks[name] = time.perf_counter()

    mark("start")
    gen = hook = None
    if variant != "plain":
        count = 2 if variant.startswith("two") else 1
        units = scene.prepared(count, separate=variant == "two-separate")
        if variant == "reference":
            inputs = [(scene.render(u.params, scene.size, scene.size), *scene.identities[u.position][:2])
                      for u in units]
            gen = ReferenceGeneration(units, scene.render, inputs)
        else:
            gen = Generation(units, scene.render, graphs=LegacyGraphCache() if variant.endswith("before") else None)
        gen.prepare_pass(full_frame(scene.latent_hw), scene.latent_hw)  # process_before_every_sampling
        hook = UNetHook(scene.unet, gen.engine).install()  # A1111Host.attach
    mark("attached")
    batch = scene.batch

    def on_cfg(step: int, x_in: torch.Tensor) -> None:  # the adapter's on_cfg_denoiser (job.on_step)
        if gen is not None:
            if not hook.installed:  # A1111Host.attached / attach
                hook.install()
            gen.step(step / steps, RowPlan.cfg([1] * batch, batch, step=step))

    denoiser = CFGDenoiser(scene.model, scene.cond, scene.uncond, steps, on_cfg)
    with torch.no_grad(), torch.autocast("cuda", dtype=scene.dtype):
        samples = sample(scene, denoiser, sampler, steps, seed, mark)
    mark("sampled")
    if gen is not None:
        hook.detach()  # p.sample ends: A1111Host.detach
        gen.end_sampling()
    test_for_nans(samples)
    if gen is not None:
        gen.close()  # postprocess
    mark("end")
    return samples


def sample(scene: Scene, denoiser, sampler: str, steps: int, seed: int, mark: Callable[[str], None]) -> torch.Tensor:
    """k-diffusion's loop over `denoiser` (A1111's or Forge's CFG denoiser)."""
    device = scene.device
    g = torch.Generator(device=device).manual_seed(seed)
    if sampler == "dpmpp_2m_karras":
        sigmas = karras_sigmas(steps, 0.0292, 14.6146, device)
    else:
        sigmas = default_sigmas(scene.model, steps)
    x = torch.randn(scene.batch, 4, *scene.latent_hw, device=device, generator=g) * sigmas[0]
    first = {"n": 0}

    def model(x, sigma, i):
        out = denoiser(x, sigma, i)
        if first["n"] == 0:
            mark("first_step")
        first["n"] += 1
        return out

    if sampler == "dpmpp_2m_karras":
        return sample_dpmpp_2m(model, x, sigmas, denoiser.callback_state)
    return sample_euler_ancestral(model, x, sigmas, denoiser.callback_state, g)


def forge_generation(scene: Scene, variant: str, sampler: str, steps: int, seed: int,
                     marks: dict | None) -> torch.Tensor:
    """One generation through Forge's sampling path (inside `torch.inference_mode()`, no autocast)."""
    device = scene.device

    def mark(name: str) -> None:
        if marks is not None:
            torch.cuda.synchronize(device)
            marks[name] = time.perf_counter()

    mark("start")
    model = scene.forge_model
    model.reset()  # Forge resets forge_objects from pristine copies before every pass
    host = forge.HOST
    gen = None
    if variant != "forge-plain":
        units = scene.prepared(2 if variant == "forge-two" else 1)
        gen = Generation(units, scene.render, graphs=scene.forge_graphs)
        gen.prepare_pass(full_frame(scene.latent_hw), scene.latent_hw, adopt=host.adopt)
        host.attach(gen, model)  # process_before_every_sampling
    model.pre_run()  # sampling_prepare
    mark("attached")

    def on_cfg(step: int, x: torch.Tensor) -> None:  # job.on_step
        if gen is not None:
            host.attached(gen, model)
            gen.step(step / steps, host.step_rows(None))

    denoiser = ForgeCFGDenoiser(model, scene.cond, scene.uncond, steps, on_cfg)
    samples = sample(scene, denoiser, sampler, steps, seed, mark)
    mark("sampled")
    if gen is not None:
        host.detach(gen)  # p.sample ends
        gen.end_sampling()
    test_for_nans(samples)
    if gen is not None:
        gen.close()  # postprocess
        host.detach(gen, final=True)
    mark("end")
    return samples


# --- the code before issue 11: graphs captured per generation with torch.cuda.graph -------------------------------
class LegacyCapturedCall:
    """CapturedCall as it was: `torch.cuda.graph` (device sync + emptied allocator cache), inputs read in place."""

    def __init__(self, compute, x, timesteps, inputs, warmup: int = 2) -> None:
        self.x, self.timesteps, self.inputs = x.detach().clone(), timesteps.detach().clone(), list(inputs)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                compute(self.x, self.timesteps, self.inputs)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.outputs = compute(self.x, self.timesteps, self.inputs)

    def __call__(self, x, timesteps, inputs=()):
        self.x.copy_(x)
        self.timesteps.copy_(timesteps)
        self.graph.replay()
        return self.outputs


class LegacyGraphCache(GraphCache):
    """A fresh cache per generation (as each hook had), capturing with `LegacyCapturedCall`."""

    def run(self, key, compute, x, timesteps, inputs=()):
        if x.device.type != "cuda" or torch.is_grad_enabled():
            return compute(x, timesteps, inputs)
        call = self.calls.get(key)
        if call is None:
            call = self.calls[key] = LegacyCapturedCall(compute, x, timesteps, inputs)
            self.captures += 1
        return call(x, timesteps, inputs)

    def release_sources(self) -> None:
        self.calls.clear()  # the generation ends: its graphs go with it


# --- measurement --------------------------------------------------------------------------------------------------
def torch_gc() -> None:
    """devices.torch_gc(): the webui empties the allocator's cache at the start of every job (and after it)."""
    torch.cuda.empty_cache()
    torch.cuda.ipc_collect()


def timed_generation(scene: Scene, variant: str, sampler: str, seed: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    torch_gc()  # process_images_inner starts with it
    generation(scene, variant, sampler, seed=seed)  # ends with the NaN check's sync
    return (time.perf_counter() - start) * 1e3


def summary(samples: list[float]) -> dict:
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return {"median": statistics.median(samples), "q1": q[0], "q3": q[2], "min": min(samples),
            "max": max(samples), "n": len(samples)}


def bench_config(scene: Scene, variants: list[str], sampler: str, reps: int) -> dict:
    """Cold first generation per variant (shared graphs emptied), then `reps` interleaved rounds."""
    result = {"cold_first_ms": {}, "ms": {}}
    for variant in variants:
        release_shared_graphs()
        scene.forge_graphs.clear()
        result["cold_first_ms"][variant] = timed_generation(scene, variant, sampler, seed=99)
    for variant in variants:  # warm-up round (not timed)
        timed_generation(scene, variant, sampler, seed=98)
    samples = {variant: [] for variant in variants}
    for rep in range(reps):
        order = variants if rep % 2 == 0 else list(reversed(variants))
        for variant in order:
            samples[variant].append(timed_generation(scene, variant, sampler, seed=rep))
    result["ms"] = {variant: summary(values) for variant, values in samples.items()}
    result["overhead"] = {}
    for v, values in samples.items():  # per round, against that round's plain generation of the same host
        base = "forge-plain" if v.startswith("forge") else "plain"
        if base in samples:
            result["overhead"][v] = summary([a / b - 1 for a, b in zip(values, samples[base], strict=True)])
    if any(v.startswith("forge-") and v != "forge-plain" for v in variants):
        graphs = scene.forge_graphs
        result["forge_graphs"] = {"kept": len(graphs.calls), "captures": graphs.captures,
                                  "disabled": graphs.disabled_reason}
    return result


def phases(scene: Scene, variant: str, sampler: str, rounds: int = 3) -> dict:
    """Median phase durations (ms) with a device sync at each phase boundary (profiling only)."""
    values: dict[str, list[float]] = {}
    for _ in range(rounds):
        marks: dict[str, float] = {}
        torch_gc()
        generation(scene, variant, sampler, marks=marks)
        names = list(marks)
        for a, b in zip(names, names[1:], strict=False):
            values.setdefault(f"{a}->{b}", []).append((marks[b] - marks[a]) * 1e3)
    return {name: statistics.median(v) for name, v in values.items()}


def check_equal(scene: Scene, sampler: str) -> dict:
    """The shipped path (graphs kept across generations) gives what graphs per generation give, bit for bit, and
    a second generation (replaying the kept graph, another identity copied in) what the first gave."""
    release_shared_graphs()
    scene.forge_graphs.clear()
    a = generation(scene, "one", sampler, seed=5)
    b = generation(scene, "one", sampler, seed=5)
    c = generation(scene, "one-before", sampler, seed=5)
    forge_a = generation(scene, "forge-one", sampler, seed=5)
    forge_b = generation(scene, "forge-one", sampler, seed=5)
    return {"repeat_max_abs": float((a - b).abs().max()), "vs_before_max_abs": float((a - c).abs().max()),
            "forge_repeat_max_abs": float((forge_a - forge_b).abs().max()),
            "forge_vs_a1111_max_abs": float((forge_a - a).abs().max()),
            "captures_shared": shared_graphs().captures}


def graph_memory(dtype: torch.dtype, configs=((512, 1), (512, 4), (768, 1), (768, 4))) -> dict:
    """GPU memory the kept graphs hold between generations after one generation with a unit at each config (the
    allocator's reserved bytes, its cache emptied before each reading, as the webui's `torch_gc` does)."""
    unet, capface = sd15_unet(dtype=dtype), sd15_capface(dtype=dtype)
    device = torch.device("cuda")
    result = {}
    release_shared_graphs()
    torch_gc()
    base = torch.cuda.memory_reserved()
    for size, batch in configs:
        generation(Scene(unet, capface, size, batch, dtype, device), "one", "dpmpp_2m_karras")
        torch_gc()
        result[f"after_{size}x{batch}_gb"] = (torch.cuda.memory_reserved() - base) / 2**30
    result["graphs"] = len(shared_graphs().calls)
    release_shared_graphs()
    torch_gc()
    result["after_release_gb"] = (torch.cuda.memory_reserved() - base) / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="512,768")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--dtypes", default="fp16,bf16")
    parser.add_argument("--samplers", default="dpmpp_2m_karras,euler_a")
    parser.add_argument("--variants", default="plain,one,one-before,two,two-before,reference,forge-plain,forge-one")
    parser.add_argument("--quick-variants", default="plain,one,two,forge-plain,forge-one",
                        help="variants for configs other than the first dtype and sampler")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick-reps", type=int, default=5)
    parser.add_argument("--phases", action="store_true", help="also profile the phases of one generation")
    parser.add_argument("--configs", help="only these size x batch pairs, e.g. 512x1,768x1")
    parser.add_argument("--graph-memory", action="store_true", help="only measure what kept graphs hold")
    parser.add_argument("--no-check", action="store_true", help="skip the bit-equality check at 512x1")
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_generation.py needs a CUDA GPU")
    patch_ldm_like_webui()
    device = torch.device("cuda")
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "steps": 20, "cfg": CFG_SCALE, "reps": args.reps, "quick_reps": args.quick_reps}
    out = {"info": info, "results": []}
    if args.graph_memory:
        out["graph_memory"] = graph_memory(DTYPES[args.dtypes.split(",")[0]])
        print(json.dumps(out), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return
    dtypes, samplers = args.dtypes.split(","), args.samplers.split(",")
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        unet = sd15_unet(dtype=dtype)
        capface = sd15_capface(dtype=dtype)
        for sampler in samplers:
            full = dtype_name == dtypes[0] and sampler == samplers[0]
            variants = args.variants.split(",") if full else args.quick_variants.split(",")
            for size in map(int, args.sizes.split(",")):
                for batch in map(int, args.batches.split(",")):
                    if args.configs and f"{size}x{batch}" not in args.configs.split(","):
                        continue
                    scene = Scene(unet, capface, size, batch, dtype, device)
                    row = {"dtype": dtype_name, "sampler": sampler, "size": size, "batch": batch}
                    row.update(bench_config(scene, variants, sampler, args.reps if full else args.quick_reps))
                    if args.phases and full:
                        row["phases"] = {v: phases(scene, v, sampler) for v in ("plain", "one", "one-before")}
                    if full and size == 512 and batch == 1 and not args.no_check:
                        row["check"] = check_equal(scene, sampler)
                    out["results"].append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        Path(args.json).write_text(json.dumps(out, indent=1))
        del unet, capface
        release_shared_graphs()
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
