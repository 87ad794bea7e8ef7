"""install.py installs only what is missing, never torch/torchvision/numpy, facenet-pytorch/facexlib without deps."""

from __future__ import annotations

import importlib.util
import runpy
import sys
import types
from pathlib import Path

INSTALL = Path(__file__).resolve().parents[1] / "install.py"


def run_install(monkeypatch, missing: set[str]) -> list[str]:
    calls: list[str] = []
    launch = types.ModuleType("launch")
    launch.run_pip = lambda args, desc=None: calls.append(args)
    monkeypatch.setitem(sys.modules, "launch", launch)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    runpy.run_path(str(INSTALL))
    return calls


def test_nothing_missing_installs_nothing(monkeypatch):
    assert run_install(monkeypatch, set()) == []


def test_missing_packages_are_installed_safely(monkeypatch):
    calls = run_install(monkeypatch, {"facenet_pytorch", "facexlib", "skimage"})
    assert "install --no-deps facenet-pytorch==2.6.0" in calls and "install --no-deps facexlib==0.3.0" in calls
    assert "install scikit-image" in calls and len(calls) == 3
    packages = {call.split()[-1].split("=")[0].split("<")[0].split(">")[0] for call in calls}
    assert not packages & {"torch", "torchvision", "numpy"}
