"""The shape of the house, read from the source: floors imported only downwards, no import cycles, and the engine
and the lifecycle import no host.

Every import counts, at module level or inside a function (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGES = ("safe_files", "preprocessors", "caphuman_ext", "scripts", "caphuman_tools")

# The floors, lowest first (docs/ARCHITECTURE.md). A module may import its own floor and the floors below, never one
# above. A module is on the floor of the longest prefix that names it.
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("safe files", ("safe_files",)),
    ("preprocessors", ("preprocessors",)),
    ("core", ("caphuman_ext",)),  # CapFace, its files, the residual engine, the A1111 module hook
    ("units", ("caphuman_ext.unit.params", "caphuman_ext.unit.infotext", "caphuman_ext.unit.photo_store",
               "caphuman_ext.unit.models", "caphuman_ext.unit.model_work", "caphuman_ext.model_files")),
    ("lifecycle", ("caphuman_ext.lifecycle",)),
    ("services", ("caphuman_ext.unit", "caphuman_ext.quality", "caphuman_ext.external_code",
                  "caphuman_ext.services")),
    ("hosts", ("caphuman_ext.hosts", "caphuman_ext.webui", "caphuman_ext.model_files_panel")),
    ("scripts", ("scripts",)),
    ("tools", ("caphuman_tools",)),
)


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules(root: Path = REPO_ROOT) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            found[module_name(path, root)] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The project module `name` refers to (itself, or the package that holds it), None outside the project."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, known)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def import_graph(root: Path = REPO_ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports, for the tree at `root` (the checkout, or another tree to check)."""
    known = modules(root)
    return {name: imports_of(name, path, known) for name, path in known.items()}


def floor_of(module: str) -> int:
    """The index in FLOORS of the floor `module` is on (its longest matching prefix); -1 if none names it."""
    best, best_length = -1, -1
    for index, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    return best


def up_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a floor, as `module (floor) -> target (floor)`."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if floor_of(target) > floor_of(module):
                found.append(f"{module} ({FLOORS[floor_of(module)][0]}) -> {target} ({FLOORS[floor_of(target)][0]})")
    return found


def mutual_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of modules that import each other."""
    return sorted((a, b) for a, targets in graph.items() for b in targets if a < b and a in graph.get(b, ()))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def test_every_module_is_on_a_floor():
    assert [module for module in import_graph() if floor_of(module) < 0] == []


def test_no_module_imports_up_a_floor():
    assert up_imports(import_graph()) == []


def test_no_two_modules_import_each_other():
    assert mutual_imports(import_graph()) == []


def test_the_floor_check_finds_an_import_up_and_a_mutual_import():
    graph = {"preprocessors.head.encoder": {"caphuman_ext.checkpoint", "safe_files.weights"},
             "caphuman_ext.checkpoint": {"safe_files.weights"}, "safe_files.weights": set(),
             "caphuman_ext.lifecycle.job": {"caphuman_ext.unit.params"},
             "caphuman_ext.unit.params": {"caphuman_ext.lifecycle.job"}}
    assert up_imports(graph) == ["caphuman_ext.unit.params (units) -> caphuman_ext.lifecycle.job (lifecycle)",
                                 "preprocessors.head.encoder (preprocessors) -> caphuman_ext.checkpoint (core)"]
    assert mutual_imports(graph) == [("caphuman_ext.lifecycle.job", "caphuman_ext.unit.params")]
    assert floor_of("caphuman_ext.unit.builder") > floor_of("caphuman_ext.lifecycle.generation")
    assert floor_of("caphuman_ext.unit.params") < floor_of("caphuman_ext.lifecycle.job")


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_engine_and_lifecycle_import_no_host_adapter():
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith("caphuman_ext.hosts") or not module.startswith("caphuman_ext"):
            continue
        hosts = sorted(t for t in targets if t.startswith("caphuman_ext.hosts"))
        assert not hosts, f"{module} imports {hosts}"


def test_host_adapters_do_not_import_each_other():
    graph = import_graph()
    assert "caphuman_ext.hosts.a1111" not in graph["caphuman_ext.hosts.forge"]
    assert "caphuman_ext.hosts.forge" not in graph["caphuman_ext.hosts.a1111"]
