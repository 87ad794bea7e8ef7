"""caphuman_ext.external_code, the Python API for other extensions, on the A1111 call sequence (tests/webui_sim.py)
with the real script, the real head pipeline on the synthetic DECA assets and the steerable CapFace."""

from __future__ import annotations

import torch

from caphuman_ext import external_code
from caphuman_ext.lifecycle.heads import mask_box
from caphuman_ext.unit.params import FIELD_ORDER, UnitParams
from tests import webui_sim
from tests.steerable import hint_coverage
from tests.test_lifecycle import STEERABLE, changed, generate, unit, webui  # noqa: F401


def test_api_version():
    assert external_code.get_api_version() == 1


def test_units_of_a_job_read_and_set(webui):  # noqa: F811
    """A job with the UI's two disabled units: read them, set one, and the job runs it."""
    ui_defaults = [getattr(UnitParams(), name) for name in FIELD_ORDER] * 2
    p = webui_sim.Processing(script=webui.script, script_args=tuple(ui_defaults), base=webui.base, steps=2)
    assert [u.enabled for u in external_code.get_units(p)] == [False, False]
    external_code.set_units(p, [{"enabled": False}, unit(webui, strength=0.8)])
    assert len(p.script_args) == len(ui_defaults)  # the script's argument range keeps its length
    units = external_code.get_units(p)
    assert [u.enabled for u in units] == [False, True] and units[1].strength == 0.8
    p.caphuman_overrides = {"strength": 1.5}  # X/Y/Z values apply to the enabled units
    assert external_code.get_enabled_units(p)[0].strength == 1.5
    del p.caphuman_overrides
    steered = webui_sim.process_images(p)
    plain, _ = generate(webui, (), steps=2)
    assert changed(plain, steered)[0] > 1e-3
    assert "strength 0.8" in p.extra_generation_params["CapHuman 2"]
    external_code.replace_unit(p, 1, {"enabled": False})
    assert not external_code.get_enabled_units(p)


def test_a_job_without_caphuman_says_so(webui):  # noqa: F811
    p = webui_sim.Processing(script=None, script_args=(), base=webui.base)
    try:
        external_code.get_units(p)
    except LookupError as error:
        assert "CapHuman" in str(error)
    else:
        raise AssertionError("no LookupError")


def _render(webui):  # noqa: F811
    return lambda params, width, height: webui.module.builder().hint(params, width, height, torch.device("cpu"))


def test_head_box_and_mask_are_the_rendered_head(webui):  # noqa: F811
    head = unit(webui, center_x=0.3, center_y=0.5, scale=0.5)
    hint = _render(webui)(external_code.with_fields(UnitParams(), **head), 160, 128)
    mask = external_code.head_mask(head, 160, 128)  # the renderer the script registered
    assert mask.shape == (1, 1, 128, 160) and torch.equal(mask, hint_coverage(hint))
    box = external_code.head_box(head, 160, 128, render=_render(webui))
    assert box == mask_box(mask) and 0 < box[0] < box[2] < 160
    moved = external_code.head_box({**head, "center_x": 0.7}, 160, 128)
    assert abs((moved[0] + moved[2]) / 2 - (box[0] + box[2]) / 2 - 0.4 * 160) < 4  # canvas fractions
    picture = external_code.head_mask(head, 160, 128, as_pil=True)
    assert picture.size == (160, 128) and picture.mode == "L"
    assert torch.equal(torch.from_numpy(__import__("numpy").asarray(picture) > 0), mask[0, 0] > 0)


def test_head_mask_of_a_crop_is_the_picture_mask_cropped(webui):  # noqa: F811
    """Inpaint "only masked" samples (64, 32, 128, 128) of a 256² picture: the frame shows that part of the head."""
    head = unit(webui, center_x=0.4, center_y=0.35, scale=0.5)
    whole = external_code.head_mask(head, 256, 256)
    crop = external_code.head_mask(head, 128, 128, frame=external_code.crop_frame((256, 256), (64, 32, 128, 128)))
    assert torch.equal(crop, whole[..., 32:160, 64:192]) and crop.sum() > 0
    outside = external_code.head_box(head, 64, 64, frame=external_code.crop_frame((256, 256), (192, 192, 64, 64)))
    assert outside is None


def test_the_head_box_is_where_caphuman_acts(webui):  # noqa: F811
    """With the steerable CapFace the change sits in the box the API gives (in latent cells of the picture)."""
    head = unit(webui, model=STEERABLE, center_x=0.65, center_y=0.4, scale=0.6)
    plain, _ = generate(webui, ())
    steered, _ = generate(webui, [head])
    left, top, right, bottom = (round(v / 8) for v in external_code.head_box(head, 128, 128))
    change = (steered[0] - plain[0]).abs().mean(dim=(0, 1))
    inside = torch.zeros_like(change, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    assert float(change[inside].mean()) > 2 * float(change[~inside].mean())
