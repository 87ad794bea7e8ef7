"""The process-wide services without a webui: settings read once per refresh, the builder rebuilt only when a model
setting changes, the offload policy, the paste cache, and the X/Y/Z setters."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import torch

from caphuman_ext.services import Services, Settings
from caphuman_ext.unit.builder import UnitBuilder
from caphuman_ext.webui import xyz_axes


def services(tmp_path: Path, settings: list[Settings], freed: list | None = None) -> Services:
    reads = iter(settings)
    freed = [] if freed is None else freed
    return Services(read_settings=lambda: next(reads), photo_root=lambda: tmp_path / "photos",
                    device=lambda: torch.device("cpu"), free_memory=lambda: freed.append(True))


def test_settings_are_read_once_per_refresh(tmp_path):
    first = Settings(folders=(tmp_path,))
    made = services(tmp_path, [first])  # a second read would raise StopIteration
    assert made.current() is first and made.current() is first and made.folders == [tmp_path]


def test_the_builder_is_rebuilt_only_when_a_model_setting_changes(tmp_path):
    base = Settings(folders=(tmp_path,), cache_size=8)
    made = services(tmp_path, [base, dataclasses.replace(base, score=True, offload=True),
                               dataclasses.replace(base, cache_size=9)])
    made.refresh()
    builder = made.builder()
    assert isinstance(builder, UnitBuilder) and builder.cache_size == 8
    made.refresh()  # score and offload are not model settings: the loaded models stay
    assert made.builder() is builder
    made.refresh()
    assert made.builder() is not builder and made.builder().cache_size == 9


def test_models_leave_the_gpu_after_use_only_when_the_settings_say_so(tmp_path, monkeypatch):
    offloads, freed = [], []
    monkeypatch.setattr(UnitBuilder, "offload", lambda self: offloads.append(True))
    made = services(tmp_path, [Settings(folders=(tmp_path,)), Settings(folders=(tmp_path,), offload=True)], freed)
    made.refresh()
    made.after_use()
    assert offloads == [] and freed == [] and made.offload is False
    made.refresh()
    made.after_use()
    assert offloads == [True] and freed == [True] and made.offload is True


def test_a_paste_reads_the_photo_store_once_per_unit(tmp_path, monkeypatch):
    from caphuman_ext import services as services_module

    reads = []
    monkeypatch.setattr(services_module, "pasted_unit", lambda params, index, store: reads.append(index) or None)
    made = services(tmp_path, [Settings(folders=(tmp_path,))])
    params = {"CapHuman 1": "strength 0.5"}
    for _ in range(3):
        assert made.pasted(params, 0) is None
    assert reads == [0]


def test_xyz_setters_write_the_overrides_of_the_cell():
    p = SimpleNamespace()
    xyz_axes.setter("strength", float)(p, "0.5", [])
    xyz_axes.setter("modes", str)(p, "position+pose", [])
    assert p.caphuman_overrides == {"strength": 0.5, "modes": ("position", "pose")}


def test_the_axes_go_to_the_xyz_script_only_when_it_exists():
    added = []
    module = SimpleNamespace(axis_options=added, AxisOption=lambda label, *args, **kwargs: label)
    xyz_axes.register_axes([SimpleNamespace(module=module, script_class=SimpleNamespace(__module__="xyz_grid.py"))])
    assert added[0] == "[CapHuman] Strength" and "[CapHuman] Act in" in added and len(added) == 10
    xyz_axes.register_axes([])  # no X/Y/Z script: nothing happens
