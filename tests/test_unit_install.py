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


REPO = INSTALL.parent
REQUIREMENTS_TXT = REPO / ".ci" / "requirements.txt"
TOOLS = {"pytest", "ruff"}  # run by .ci/run, imported by nothing
# pip name -> module, for the requirements whose module has another name
MODULE_OF = {"pillow": "PIL", "opencv-python-headless": "cv2", "scikit-image": "skimage"}
# module -> the package that imports it without declaring it: installed without its dependencies (.ci/run,
# install.py), or an optional dependency (starlette's TestClient needs httpx)
NEEDED_BY_PACKAGES = {"einops": "ldm", "omegaconf": "ldm", "requests": "facenet_pytorch",
                      "tqdm": "facenet_pytorch", "httpx": "starlette"}


def imported_modules(paths) -> set[str]:
    """Top-level names of every `import x` / `from x import` in the Python files under `paths`."""
    import ast
    import warnings

    names: set[str] = set()
    for root in paths:
        for path in Path(root).rglob("*.py"):
            with warnings.catch_warnings():  # other packages' sources may hold invalid escape sequences
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split(".")[0])
    return names


def _requirements_table() -> dict:
    import ast

    tree = ast.parse(INSTALL.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "REQUIREMENTS":
            return ast.literal_eval(node.value)
    raise AssertionError("install.py has no REQUIREMENTS table")


def test_every_install_requirement_is_imported_by_the_extension():
    used = imported_modules([REPO / "safe_files", REPO / "caphuman_ext", REPO / "preprocessors", REPO / "scripts"])
    unused = [module for module in _requirements_table() if module not in used]
    assert not unused, f"install.py installs {unused}, which the extension never imports"


def test_every_ci_requirement_is_imported():
    ours = imported_modules([REPO / "safe_files", REPO / "caphuman_ext", REPO / "preprocessors", REPO / "scripts",
                             REPO / "caphuman_tools", REPO / "tests", REPO / "benchmarks"])
    unused = []
    for line in REQUIREMENTS_TXT.read_text().splitlines():
        name = line.split("#")[0].strip().split("=")[0].split("<")[0].split(">")[0].strip().lower()
        if not name or name in TOOLS:
            continue
        module = MODULE_OF.get(name, name.replace("-", "_"))
        if module in ours:
            continue
        owner = NEEDED_BY_PACKAGES.get(module)
        spec = importlib.util.find_spec(owner) if owner else None
        if spec is None or module not in imported_modules(spec.submodule_search_locations):
            unused.append(name)
    assert not unused, f".ci/requirements.txt lists {unused}, which nothing imports"
