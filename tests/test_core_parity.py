"""CapFace + hook against the reference CapHuman outputs in ../shared/parity (fp32, |Δeps| <= 2e-4).

The reference was computed on another machine: comparisons with it allow float32 noise; bit identity is asked only
between two runs on this machine.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import caphuman_ext
from tests.conftest import assert_within_float32_noise
from tests.core_helpers import parity_unet

TOLERANCE = 2e-4


@pytest.fixture(scope="module")
def case_a(parity_dir):
    return load_file(parity_dir / "capface_tiny_A.safetensors")


@pytest.fixture(scope="module")
def capface(parity_dir):
    return caphuman_ext.load_capface(parity_dir / "capface_tiny_weights.safetensors")


@pytest.fixture(scope="module")
def unet(parity_dir):
    return parity_unet(parity_dir)


def test_unet_without_control_is_the_reference(unet, case_a):
    with torch.no_grad():
        eps = unet(case_a["input.x"], case_a["input.t"], context=case_a["input.text"])
    assert_within_float32_noise(eps, case_a["output.eps_without_control"], what="eps without control")


def test_capface_residuals_and_mask_match_reference(capface, case_a):
    ctx = capface.identity_context(case_a["input.clip"], case_a["input.face"])
    with torch.no_grad():
        residuals, mask = capface(case_a["input.x"], case_a["input.hint"], case_a["input.t"], ctx)
    assert len(residuals) == 13
    # the mask is a sigmoid: its float32 noise is that of the logits times the sigmoid's largest slope, 1/4
    logits = capface.mask_predict[0](capface.hint_features(case_a["input.hint"])[0])
    assert_within_float32_noise(mask, case_a["intermediate.unit0.mask"], scale=logits.abs().max().item() / 4,
                                what="mask")
    for index, residual in enumerate(residuals):
        assert_within_float32_noise(residual, case_a[f"intermediate.unit0.control{index:02d}"],
                                    what=f"residual {index}")


def test_hooked_unet_reproduces_reference_eps(unet, capface, case_a):
    ctx = capface.identity_context(case_a["input.clip"], case_a["input.face"])
    control = caphuman_ext.CapFaceControl(capface, hint=case_a["input.hint"], context=ctx, strength=1.0,
                                          drop_identity_above_t=0)
    with torch.no_grad(), caphuman_ext.hook_unet(unet, [control]):
        eps = unet(case_a["input.x"], case_a["input.t"], context=case_a["input.text"])
    assert (eps - case_a["output.eps"]).abs().max().item() <= TOLERANCE
    assert (eps - case_a["output.eps_without_control"]).abs().max().item() > 0.1  # the control does something


def test_hook_leaves_unet_untouched(unet, capface, case_a):
    ctx = capface.identity_context(case_a["input.clip"], case_a["input.face"])
    control = caphuman_ext.CapFaceControl(capface, hint=case_a["input.hint"], context=ctx)
    with torch.no_grad():
        before = unet(case_a["input.x"], case_a["input.t"], context=case_a["input.text"])
        with caphuman_ext.hook_unet(unet, [control]):
            hooked = unet(case_a["input.x"], case_a["input.t"], context=case_a["input.text"])
        after = unet(case_a["input.x"], case_a["input.t"], context=case_a["input.text"])
    assert (hooked - before).abs().max() > 0.1  # the hook was in place
    assert torch.equal(after, before)  # same machine, same kernels: bit for bit
