"""Two units on the same CapFace run as one pass over their rows stacked; each keeps its own hint, identity,
strength, tau and mask, as the reference computes them one by one."""

from __future__ import annotations

import torch

import caphuman_ext
from caphuman_ext.rows import RowPlan
from tests.core_helpers import random_capface, reference_eps, tiny_unet


def test_units_sharing_a_capface_equal_the_reference_one_by_one():
    unet = tiny_unet(seed=3).requires_grad_(False)
    capface = random_capface(seed=4).requires_grad_(False)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([850.0, 120.0])
    text = torch.randn(4, 77, 64, generator=g)
    people = [(torch.rand(2, 9, 64, 64, generator=g) * 2 - 1, torch.randn(2, 257, 1024, generator=g),
               torch.randn(2, 1, 512, generator=g)) for _ in range(2)]
    with torch.no_grad():  # move the head-mask threshold to the middle of this CapFace's logits: masks partly on
        logits = torch.logit(capface.hint_features(people[0][0])[1])
        capface.mask_predict[0].bias -= logits.median()
        masks = [capface.hint_features(hint)[1] > 0.5 for hint, _, _ in people]
    assert all(0.1 < float(mask.float().mean()) < 0.9 for mask in masks)
    units = [(capface, *people[0], 1.0, 0.0), (capface, *people[1], 0.6, 300.0)]
    controls = [caphuman_ext.CapFaceControl(c, hint=h, context=c.identity_context(clip, face), strength=s,
                                            drop_identity_above_t=tau) for c, h, clip, face, s, tau in units]
    x_cfg, t_cfg = torch.cat([x, x]), torch.cat([t, t])  # cond rows then uncond rows: rows shared per image
    with torch.no_grad():
        expected = reference_eps(unet, x_cfg, t_cfg, text,
                                 [(c, h.repeat(2, 1, 1, 1), clip.repeat(2, 1, 1), face.repeat(2, 1, 1), s, tau)
                                  for c, h, clip, face, s, tau in units])
        for sources in (None, [0, 1, 0, 1]):
            with caphuman_ext.hook_unet(unet, controls, rows=None if sources is None else RowPlan.fixed(sources)):
                if sources is None:  # every row on its own: per-row conditioning must cover all 4 rows
                    for control, (_, h, clip, face, _, _) in zip(controls, units, strict=True):
                        control.hint = h.repeat(2, 1, 1, 1)
                        control.context = capface.identity_context(clip.repeat(2, 1, 1), face.repeat(2, 1, 1))
                got = unet(x_cfg, t_cfg, context=text)
            assert (got - expected).abs().max().item() <= 2e-4, sources
            for control, (_, h, clip, face, _, _) in zip(controls, units, strict=True):
                control.hint, control.context = h, capface.identity_context(clip, face)
