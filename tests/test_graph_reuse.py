"""Captured CapFace passes are kept across generations and never serve a stale photo, strength, hint or size.

On the CPU, `ReplayOnCpu` stands in for CUDA graphs with the same contract: the first call of a key keeps the
`compute` closure of that moment (everything it refers to is "baked in", as a graph bakes in addresses) and later
calls run it on static buffers, with the inputs copied in as `CapturedCall.load` does. Whatever the cache key or the
copied inputs miss shows up as a stale result. The CUDA test runs the same generations through real graphs.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from caphuman_ext import CapFaceControl, UNetHook, hook_unet
from caphuman_ext.graphs import CapturedCall, GraphCache, version_of
from caphuman_ext.lifecycle.generation import Generation, PreparedUnit
from caphuman_ext.lifecycle.geometry import full_frame
from caphuman_ext.rows import RowPlan, cfg_rows
from tests.core_helpers import ReplayedClosure, ReplayOnCpu, random_capface, tiny_unet


def scene(device: str):
    g = torch.Generator().manual_seed(0)
    unet = tiny_unet(seed=1).to(device).requires_grad_(False)
    capface = random_capface(seed=2).to(device).requires_grad_(False)
    text = torch.randn(2, 77, 64, generator=g).to(device)
    people = [(torch.randn(1, 257, 1024, generator=g).to(device), torch.randn(1, 1, 512, generator=g).to(device))
              for _ in range(2)]
    hints = {size: [(torch.rand(1, 9, size, size, generator=g) * 2 - 1).to(device) for _ in range(2)]
             for size in (64, 128)}
    return unet, capface, text, people, hints


def one_generation(unet, capface, text, person, hint, strength, graphs, latent, check=True):
    """A generation through the Generation API (two steps); returns the UNet outputs of its steps."""
    clip, face = person
    with torch.no_grad():
        context = capface.identity_context(clip, face)
    params = SimpleNamespace(strength=strength, start=0.0, end=1.0, pose_only=0.0)
    generation = Generation([PreparedUnit(params, capface, context)], render=lambda *_: hint.clone(),
                            graphs=graphs)
    latent_hw = tuple(latent.shape[-2:])
    generation.prepare_pass(full_frame(latent_hw), latent_hw)
    hook = UNetHook(unet, generation.engine).install()
    outs = []
    with torch.no_grad():
        for step, t in enumerate((900.0, 300.0)):
            generation.step(step / 2, RowPlan(cfg_rows([1], 1), step))
            timesteps = torch.full((2,), t, device=latent.device)
            outs.append(unet(latent, timesteps, context=text))
    hook.detach()
    generation.close()
    expected = []
    if not check:
        return outs, expected
    control = CapFaceControl(capface, hint=hint, context=context, strength=strength)
    with torch.no_grad(), hook_unet(unet, [control], rows=RowPlan.fixed([0, 0]), cuda_graphs=False):
        for t in (900.0, 300.0):
            expected.append(unet(latent, torch.full((2,), t, device=latent.device), context=text))
    return outs, expected


def run_sequence(device: str, graphs: GraphCache, tolerance: float) -> list[int]:
    """Generations that change one thing at a time; each must equal its eager result. Returns captures so far
    after each generation."""
    unet, capface, text, people, hints = scene(device)
    g = torch.Generator().manual_seed(1)
    latents = {size: torch.randn(1, 4, size // 8, size // 8, generator=g).repeat(2, 1, 1, 1).to(device)
               for size in (64, 128)}
    sequence = [  # (what changed, person, hint index, strength, size)
        ("first", 0, 0, 1.0, 64),
        ("same again", 0, 0, 1.0, 64),
        ("another photo (context)", 1, 0, 1.0, 64),
        ("another hint", 1, 1, 1.0, 64),
        ("another strength", 1, 1, 0.6, 64),
        ("another size", 1, 1, 0.6, 128),
        ("back to the first", 0, 0, 1.0, 64),
    ]
    captures = []
    for name, person, hint, strength, size in sequence:
        outs, expected = one_generation(unet, capface, text, people[person], hints[size][hint], strength, graphs,
                                        latents[size])
        for got, want in zip(outs, expected, strict=True):
            assert (got - want).abs().max().item() <= tolerance, f"stale result after: {name}"
        captures.append(graphs.captures)
    if device == "cpu":  # CapFace's weights move (offload and back): the kept graphs must not be replayed
        capface.to(torch.float64).to(torch.float32)
        outs, expected = one_generation(unet, capface, text, people[0], hints[64][0], 1.0, graphs, latents[64])
        for got, want in zip(outs, expected, strict=True):
            assert (got - want).abs().max().item() <= tolerance, "stale result after: CapFace's weights moved"
        captures.append(graphs.captures)
    return captures


def test_kept_graphs_never_serve_stale_inputs_cpu():
    captures = run_sequence("cpu", ReplayOnCpu(max_graphs=8), tolerance=1e-5)
    # photo and hint changes replay the kept graph; strength, size and moved weights capture anew
    assert captures == [1, 1, 1, 1, 2, 3, 3, 4]


class DropsMidSampling(ReplayOnCpu):
    """Memory pressure at its worst: every `every`-th UNet call drops all kept graphs first (between the steps of a
    sampling, not only between generations)."""

    def __init__(self, every: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.every, self.calls_seen = every, 0

    def run(self, key, compute, x, timesteps, inputs=()):
        self.calls_seen += 1
        if self.calls_seen % self.every == 0:
            self.drop("test: memory pressure")
        return super().run(key, compute, x, timesteps, inputs)


def pictures(graphs: GraphCache) -> list[torch.Tensor]:
    """The UNet outputs of a sequence of generations (photo, hint, strength and size changing) through `graphs`."""
    unet, capface, text, people, hints = scene("cpu")
    g = torch.Generator().manual_seed(1)
    latents = {size: torch.randn(1, 4, size // 8, size // 8, generator=g).repeat(2, 1, 1, 1)
               for size in (64, 128)}
    outs = []
    for person, hint, strength, size in ((0, 0, 1.0, 64), (1, 1, 0.6, 128), (1, 0, 1.0, 64), (0, 1, 0.6, 128)):
        outs += one_generation(unet, capface, text, people[person], hints[size][hint], strength, graphs,
                               latents[size], check=False)[0]
    return outs


def test_dropped_graphs_never_serve_stale_pictures_cpu():
    kept = ReplayOnCpu(max_graphs=8, max_bytes=10**9)
    reference = pictures(kept)
    assert kept.captures == 2 and not kept.drops  # everything kept: later generations replay
    budget = ReplayOnCpu(max_graphs=8, max_bytes=150)  # room for one graph of 100 bytes: each new key evicts
    mid = DropsMidSampling(every=3, max_graphs=8, max_bytes=10**9)
    for graphs in (budget, mid):
        got = pictures(graphs)
        assert graphs.drops and graphs.captures > kept.captures  # it did drop, and captured again
        assert graphs.kept_bytes <= max(graphs.max_bytes, ReplayOnCpu.graph_bytes)
        for a, b in zip(got, reference, strict=True):
            assert torch.equal(a, b), f"a picture changed after a drop ({graphs.drops})"


class OutOfMemoryOnCapture(ReplayOnCpu):
    def __init__(self, failures: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.failures = failures

    def capture(self, compute, x, timesteps, inputs):
        if self.failures:
            self.failures -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().capture(compute, x, timesteps, inputs)


def test_out_of_memory_while_capturing_drops_kept_graphs_and_retries():
    reference = pictures(ReplayOnCpu(max_graphs=8))
    once = OutOfMemoryOnCapture(failures=0, max_graphs=8)
    pictures(once)  # graphs kept
    once.failures = 1  # the next capture runs short once: the kept graphs go, the capture is retried
    always = OutOfMemoryOnCapture(failures=10**6, max_graphs=8)  # never enough memory: eager, never disabled
    for graphs in (once, always):
        got = pictures(graphs)
        assert graphs.disabled_reason is None
        for a, b in zip(got, reference, strict=True):
            assert torch.equal(a, b)
    assert "out of memory while capturing" in once.drops and once.captures > 2
    assert always.captures == 0 and not always.calls


def test_graph_budget_follows_the_card_and_the_low_vram_flags():
    from caphuman_ext.graphs import GB, graph_budget

    assert graph_budget(8 * GB) == GB and graph_budget(8 * GB, low_vram=True) == GB // 4
    assert graph_budget(6 * GB) < graph_budget(12 * GB) < graph_budget(24 * GB)
    assert GraphCache(max_bytes=5).budget(torch.zeros(1)) == 5


def test_generation_tells_the_shared_graphs_about_offloading():
    from caphuman_ext.graphs import shared_graphs

    unit = PreparedUnit(SimpleNamespace(strength=1.0), random_capface(seed=2), torch.zeros(1, 258, 64))
    before = shared_graphs().low_vram
    try:
        Generation([unit], render=lambda *_: None, offload=True)
        assert shared_graphs().low_vram
        Generation.failed("no units: leaves it alone")
        assert shared_graphs().low_vram
        Generation([unit], render=lambda *_: None, offload=False)
        assert not shared_graphs().low_vram
    finally:
        shared_graphs().low_vram = before


def test_graphed_module_wraps_on_cuda_only_and_keeps_graphs_when_nothing_moves():
    from preprocessors.graphed_module import GraphedModule, graphed_on_cuda

    net = torch.nn.Linear(3, 2)
    assert graphed_on_cuda(net, "cpu") is net  # the CPU runs the module itself: results unchanged
    wrapped = graphed_on_cuda(net, "cuda")  # made without touching a GPU
    assert isinstance(wrapped, GraphedModule) and graphed_on_cuda(wrapped, "cuda") is wrapped
    x = torch.rand(4, 3)
    assert torch.equal(wrapped(x), net(x))  # CPU inputs: eager
    wrapped._graphs["shape"] = "a graph"
    wrapped.to("cpu")  # already there: the preprocessors call `.to(device)` before every use
    assert wrapped._graphs
    wrapped.to(torch.float64)
    assert not wrapped._graphs


def test_load_copies_new_and_modified_inputs_only():
    call = object.__new__(CapturedCall)
    first = torch.zeros(3)
    call.inputs, call._sources, call._versions = [first.clone()], [first], [version_of(first)]
    assert call.load([first]) == 0
    first += 1  # modified in place: copied
    assert call.load([first]) == 1 and call.inputs[0].tolist() == [1.0, 1.0, 1.0]
    other = torch.full((3,), 7.0)  # another tensor: copied
    assert call.load([other]) == 1 and call.inputs[0].tolist() == [7.0, 7.0, 7.0]
    call.release_sources()
    assert call.load([other]) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kept_graphs_never_serve_stale_inputs_cuda():
    graphs = GraphCache(max_graphs=8)
    captures = run_sequence("cuda", graphs, tolerance=2e-4)
    assert graphs.disabled_reason is None
    assert captures == [1, 1, 1, 1, 2, 3, 3]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphed_module_equals_eager_and_hands_out_copies():
    from preprocessors.graphed_module import GraphedModule

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(8, 4, 1)).cuda()
    graphed = GraphedModule(net)
    a, b = torch.rand(1, 3, 32, 32, device="cuda"), torch.rand(1, 3, 32, 32, device="cuda")
    with torch.no_grad():
        first = graphed(a)
        second = graphed(b)  # a replay: must not overwrite `first`
        assert graphed.disabled_reason is None and len(graphed._graphs) == 1
        assert torch.equal(first, net(a)) and torch.equal(second, net(b))
        graphed.to(torch.float64).to(torch.float32)  # weights moved: graphs dropped, results still right
        assert not graphed._graphs
        assert torch.equal(graphed(a), net(a))
        with torch.inference_mode():  # captured apart: a graph of inference tensors cannot serve outside it
            assert torch.equal(graphed(a), net(a))
        assert len(graphed._graphs) == 2 and torch.equal(graphed(b), net(b))
        parser = GraphedModule(net, capture_after=2, max_input_numel=3 * 32 * 32)
        assert torch.equal(parser(a), net(a)) and not parser._graphs  # a size seen once: eager
        assert torch.equal(parser(b), net(b)) and len(parser._graphs) == 1  # seen twice: captured
        big = torch.rand(1, 3, 64, 64, device="cuda")
        assert torch.equal(parser(big), net(big)) and torch.equal(parser(big), net(big)) and len(parser._graphs) == 1


def test_place_moves_a_module_only_when_it_is_elsewhere():
    from preprocessors.graphed_module import place

    net, moves = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)), []
    original = net.to
    net.to = lambda *args, **kwargs: moves.append(args) or original(*args, **kwargs)
    assert place(net, "cpu") is net and not moves  # already there: no walk over every tensor
    place(net, "cpu", torch.float64)
    assert moves and next(net.parameters()).dtype == torch.float64 and net[1].running_mean.dtype == torch.float64
    buffers_only = torch.nn.Module()
    buffers_only.register_buffer("table", torch.zeros(2))
    assert place(buffers_only, "cpu") is buffers_only


def test_out_of_memory_in_sampling_drops_the_kept_graphs():
    from caphuman_ext.lifecycle import job

    graphs = ReplayOnCpu(max_graphs=8)
    graphs.calls["kept"] = ReplayedClosure(lambda x, t, i: [x], torch.zeros(1), torch.zeros(1), [], 100)
    generation = Generation([], render=lambda *_: None, graphs=graphs)

    def sample(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    p = SimpleNamespace(sample=sample, extra_generation_params={})
    job._wrap_sample(p, generation, SimpleNamespace(detach=lambda generation: None), lambda params: "")
    with pytest.raises(torch.OutOfMemoryError):
        p.sample()
    assert not graphs.calls and graphs.drops == ["out of memory in sampling"]  # the webui's retry has the memory
