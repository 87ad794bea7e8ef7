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
from tests.core_helpers import random_capface, tiny_unet


class ReplayOnCpu(GraphCache):
    """GraphCache whose "graphs" are the first call's closure run on static buffers (CPU stand-in for capture)."""

    def run(self, key, compute, x, timesteps, inputs=()):
        call = self.calls.get(key)
        if call is None:
            call = object.__new__(CapturedCall)
            call.x, call.timesteps = x.clone(), timesteps.clone()
            call.inputs = [tensor.clone() for tensor in inputs]
            call._sources, call._versions = list(inputs), [version_of(tensor) for tensor in inputs]
            call.compute = compute
            self.calls[key] = call
            self.captures += 1
        call.load(inputs)
        call.x.copy_(x)
        call.timesteps.copy_(timesteps)
        return call.compute(call.x, call.timesteps, call.inputs)


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


def one_generation(unet, capface, text, person, hint, strength, graphs, latent):
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
    from caphuman_ext.graphed_module import GraphedModule

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
