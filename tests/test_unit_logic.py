"""The webui unit's logic without the webui: argument parsing and validation, infotext, scheduling, models."""

from __future__ import annotations

import pytest
from PIL import Image

from caphuman_ext.lifecycle.generation import in_window
from caphuman_ext.rows import RowPlan, cfg_rows
from caphuman_ext.unit.infotext import from_infotext, infotext_key, to_infotext
from caphuman_ext.unit.models import list_capface_models
from caphuman_ext.unit.params import FIELD_ORDER, UnitParams, UnitValidationError, unit_from_dict, units_from_args
from tests.inputs import b64_png


def test_api_unit_with_base64_images():
    unit = unit_from_dict({"enabled": True, "reference_images": [b64_png()], "pose_image": "data:image/png;base64,"
                           + b64_png((48, 40)), "strength": 0.8, "modes": "position,pose,lighting"})
    assert unit.reference_images[0].size == (32, 32) and unit.pose_image.size == (48, 40)
    assert unit.modes == ("position", "pose", "lighting") and unit.strength == 0.8
    single = unit_from_dict({"enabled": True, "reference_image": b64_png()})
    assert len(single.reference_images) == 1


@pytest.mark.parametrize(("payload", "field"), [
    ({"enabled": True}, "reference_images"),
    ({"strength": 5}, "strength"),
    ({"strength": "strong"}, "strength"),
    ({"modes": ["position", "tilt"]}, "modes"),
    ({"resize_mode": "Stretch"}, "resize_mode"),
    ({"start": 0.8, "end": 0.2}, "start"),
    ({"enabled": "yes"}, "enabled"),
    ({"reference_images": ["not base64 !!"]}, "reference_images"),
    ({"colour": 1}, "colour"),
    ({"face_index": -1}, "face_index"),
])
def test_bad_payloads_name_the_field(payload, field):
    with pytest.raises(UnitValidationError) as info:
        unit_from_dict(payload)
    assert info.value.field == field and info.value.reason


def test_flat_ui_values_become_units():
    ui = [getattr(UnitParams(), name) for name in FIELD_ORDER]
    first = list(ui)
    first[FIELD_ORDER.index("enabled")] = True
    first[FIELD_ORDER.index("reference_images")] = Image.new("RGB", (20, 20))
    first[FIELD_ORDER.index("strength")] = 0.5
    units = units_from_args(first + ui)
    assert len(units) == 2 and units[0].enabled and units[0].strength == 0.5 and not units[1].enabled
    assert len(units[0].reference_images) == 1


def test_api_dicts_followed_by_ui_defaults():
    ui_defaults = [getattr(UnitParams(), name) for name in FIELD_ORDER]
    units = units_from_args([{"enabled": True, "reference_image": b64_png()}] + ui_defaults)
    assert len(units) == 1 and units[0].enabled


def test_infotext_round_trip():
    unit = UnitParams(enabled=True, model="caphuman.ckpt", modes=("position", "expression"), strength=0.75,
                      start=0.1, end=0.9, pose_only=0.2, yaw=-25, resize_mode="Resize and Fill")
    text = to_infotext(unit)
    assert "," not in text  # one infotext value, no quoting needed
    back = from_infotext(text)
    assert back["enabled"] and back["modes"] == ["position", "expression"]
    restored = unit_from_dict({k: v for k, v in back.items() if k != "enabled"})
    for name in ("model", "strength", "start", "end", "pose_only", "yaw", "resize_mode"):
        assert getattr(restored, name) == getattr(unit, name), name
    assert infotext_key(0) == "CapHuman 1"
    assert from_infotext(to_infotext(UnitParams(enabled=True)))["model"] == ""  # the first model found


def test_step_window():
    steps = [s for s in range(20) if in_window(s / 20, 0.25, 0.75)]
    assert steps == list(range(5, 15))
    assert all(in_window(s / 20, 0.0, 1.0) for s in range(20))


def test_act_in_passes():
    from caphuman_ext.lifecycle.generation import acts_in_pass

    assert [acts_in_pass("both", h) for h in (False, True)] == [True, True]
    assert [acts_in_pass("first", h) for h in (False, True)] == [True, False]
    assert [acts_in_pass("hires", h) for h in (False, True)] == [False, True]


def test_row_plans_of_every_host():
    assert RowPlan.chunks(2).take(6) == (0, 1, 0, 1, 0, 1)  # Forge: three chunks of two images
    assert RowPlan.chunks(2).take(5) is None
    assert RowPlan.fixed([0, 1, 0, 1]).take(4) == (0, 1, 0, 1)
    plan = RowPlan.cfg([1, 1], 2, step=3)  # A1111: cond, cond, uncond, uncond; consumed call by call
    assert plan.take(2) == (0, 1) and plan.take(2) == (0, 1) and plan.take(1) is None


def test_cfg_rows_share_by_image():
    assert cfg_rows([1, 1], 2) == (0, 1, 0, 1)  # batch 2: cond, cond, uncond, uncond
    assert cfg_rows([2, 2], 2) == (0, 0, 1, 1, 0, 1)  # AND-prompts: two conds per image
    assert cfg_rows([3, 1], 2) == (0, 0, 0, 1, 0, 1)  # Prompt matrix: sub-prompt counts differ per image
    assert cfg_rows([1], 1, extra_uncond_sets=1) == (0, 0, 0)  # instruct-pix2pix's image-uncond rows


def test_row_plan_is_consumed_call_by_call():
    plan = RowPlan(cfg_rows([2, 1], 2), step=0)
    assert plan.take(2) == (0, 0) and plan.take(2) == (1, 0) and plan.take(1) == (1,)
    assert plan.take(1) is None  # more rows than the step planned: every row on its own
    skipped = RowPlan(cfg_rows([1, 1], 2), step=3)
    assert skipped.take(2) == (0, 1)  # skip-early-CFG dropped the uncond rows


def test_models_are_listed_from_every_folder(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "caphuman.ckpt").write_bytes(b"x")
    (second / "caphuman_capface.safetensors").write_bytes(b"x")
    (second / "caphuman.ckpt").write_bytes(b"x")
    (second / "v1-5.safetensors").write_bytes(b"x")
    models = list_capface_models([first, second, tmp_path / "missing"])
    assert list(models) == ["caphuman.ckpt", "caphuman_capface.safetensors"]
    assert models["caphuman.ckpt"].parent == first


def test_more_photos_from_the_ui_join_the_reference(tmp_path):
    path = tmp_path / "second.png"
    Image.new("RGB", (24, 24)).save(path)
    uploaded = type("Upload", (), {"name": str(path)})()
    unit = unit_from_dict({"enabled": True, "reference_images": Image.new("RGB", (20, 20)),
                           "more_reference_images": [uploaded]})
    assert [image.size for image in unit.reference_images] == [(20, 20), (24, 24)]
