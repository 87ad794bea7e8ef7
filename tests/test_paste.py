"""Pasting an image's parameters into the unit tabs: never an enabled unit without its photos."""

from __future__ import annotations

import numpy as np
from PIL import Image

from caphuman_ext.unit.infotext import to_infotext
from caphuman_ext.unit.params import unit_from_dict
from caphuman_ext.unit.paste import pasted_unit
from caphuman_ext.unit.photo_store import PhotoStore


def _unit(color=(200, 120, 90)):
    photo = Image.new("RGB", (40, 32), color)
    return unit_from_dict({"enabled": True, "reference_images": [photo, Image.new("RGB", (20, 20))],
                           "strength": 0.7, "yaw": 15})


def test_photos_in_the_store_come_back_and_enable_the_unit(tmp_path):
    store = PhotoStore(tmp_path / "photos")
    unit = _unit()
    params = {"CapHuman 2": to_infotext(unit, store.save(unit.reference_images))}
    pasted = pasted_unit(params, 1, store)
    assert pasted.enabled is True and pasted.settings["strength"] == 0.7 and pasted.settings["yaw"] == 15
    assert np.array_equal(np.asarray(pasted.reference), np.asarray(unit.reference_images[0]))
    assert pasted.more and len(pasted.more) == 1
    assert pasted_unit(params, 0, store) is None  # unit 1 had no entry: its tab is left alone


def test_without_the_photos_the_unit_is_not_enabled(tmp_path):
    unit = _unit()
    params = {"CapHuman 1": to_infotext(unit)}
    pasted = pasted_unit(params, 0, PhotoStore(tmp_path / "empty"))
    assert pasted.enabled is None and pasted.reference is None
    assert pasted.settings["strength"] == 0.7 and "add the person's photo" in pasted.message


def test_detail_passes_paste_what_the_unit_did(tmp_path):
    """The setting pasted is what the unit did in the detail passes of other extensions (ADetailer): a paste then
    redoes the picture whatever the other extension's settings are now; an old infotext leaves the radio alone."""
    from caphuman_ext.lifecycle.detail import DETAIL_KEY

    store = PhotoStore(tmp_path / "photos")
    unit = _unit()
    unit.detail_passes = "identity"
    text = to_infotext(unit, store.save(unit.reference_images))
    assert "detail_passes identity" in text
    acted = pasted_unit({"CapHuman 1": text, DETAIL_KEY: "1 identity; 2 head"}, 0, store)
    assert acted.settings["detail_passes"] == "identity"
    assert pasted_unit({"CapHuman 1": text}, 0, store).settings["detail_passes"] == "off"
    assert pasted_unit({"CapHuman 1": text, DETAIL_KEY: "2 head"}, 0, store).settings["detail_passes"] == "off"
    old = text.replace("; detail_passes identity", "")
    assert "detail_passes" not in pasted_unit({"CapHuman 1": old}, 0, store).settings
