"""The house's plan, checked from the source with ``ast`` (nothing is imported): imports run downward only.

Every import statement counts, at module level and inside function bodies alike: a function-body import is
only a deferred edge, and a cycle through one still means two modules that cannot be understood (or moved)
apart. Layers, lowest first (docs/ARCHITECTURE.md):

    foundation   razor_robot (the package file), razor_robot.io, razor_robot.config
    envs         razor_robot.envs (envs/)          policies   razor_robot.policies (policies/)
    rollout      razor_robot.rollout
    report       razor_robot.report
    measure      razor_robot.measure
    training     razor_robot.training
    experiment   razor_robot.experiment
    cli          razor_robot.cli

A module imports its own layer and the layers below it; envs and policies sit side by side and never import
each other. Across modules only public names are imported (no ``from x import _helper``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.core

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"razor_robot": REPO / "razor_robot", "razor_robot.envs": REPO / "envs",
            "razor_robot.policies": REPO / "policies"}
"""Installed package name -> source folder (pyproject's package-dir)."""
LAYERS = [
    ("foundation", 0, ("razor_robot", "razor_robot.io", "razor_robot.config")),
    ("envs", 1, ("razor_robot.envs",)),
    ("policies", 1, ("razor_robot.policies",)),
    ("rollout", 2, ("razor_robot.rollout",)),
    ("report", 3, ("razor_robot.report",)),
    ("measure", 4, ("razor_robot.measure",)),
    ("training", 5, ("razor_robot.training",)),
    ("experiment", 6, ("razor_robot.experiment",)),
    ("cli", 7, ("razor_robot.cli",)),
]
MAX_FUNCTION_LINES = 80


def source_files() -> dict[str, Path]:
    """Module name -> file, for every module of the three packages."""
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            if package == "razor_robot" and parts and parts[0] in ("envs", "policies"):
                continue  # not part of razor_robot/ (never the case in the repository; a safety net)
            modules[".".join((package, *parts))] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> dict[str, list[str]]:
    """Project modules that ``name`` imports -> the names it takes from each (empty for ``import x``)."""
    is_package = path.name == "__init__.py"
    found: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.setdefault(alias.name, [])
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package this module is in (or its parents)
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:  # `from package import module`
                    found.setdefault(submodule, [])
                elif source in modules:
                    found.setdefault(source, []).append(alias.name)
    found.pop(name, None)
    return found


def import_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], list[str]]]:
    modules = source_files()
    graph, names = {}, {}
    for name, path in modules.items():
        edges = imports_of(name, path, modules)
        graph[name] = set(edges)
        names.update({(name, target): taken for target, taken in edges.items()})
    return graph, names


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer_of(module: str) -> tuple[str, int]:
    """The layer a module belongs to: the one with the longest matching prefix."""
    best = None
    for layer, rank, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer, rank)
    if best is None or (best[1] == "foundation" and module not in LAYERS[0][2]):
        raise AssertionError(f"{module} belongs to no layer: place it in one (tests/test_architecture.py)")
    return best[1], best[2]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that go up a layer, or sideways between two layers of the same rank (envs <-> policies)."""
    bad = []
    for module, targets in sorted(graph.items()):
        layer, rank = layer_of(module)
        for target in sorted(targets):
            target_layer, target_rank = layer_of(target)
            if target_layer != layer and target_rank >= rank:
                bad.append(f"{module} ({layer}) imports {target} ({target_layer})")
    return bad


def test_the_import_graph_has_no_cycle():
    graph, _ = import_graph()
    assert len(graph) > 60  # the three packages were found
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_run_downward_only():
    graph, _ = import_graph()
    assert layer_violations(graph) == []


def test_no_module_imports_another_modules_private_names():
    _, names = import_graph()
    private = [f"{module} takes {name} from {target}" for (module, target), taken in sorted(names.items())
               for name in taken if name.startswith("_") and not name.startswith("__")]
    assert private == []


def test_no_function_is_longer_than_the_limit():
    too_long = []
    for name, path in source_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {lines} lines")
    assert too_long == []


# ---- the checks themselves, on graphs made up for them ----

def test_find_cycle_finds_a_cycle_through_any_number_of_modules():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    cycle = find_cycle({"x": {"a"}, "a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()})
    assert cycle == ["a", "b", "c", "a"]


def test_the_real_graph_with_one_edge_added_back_up_has_a_cycle():
    graph, _ = import_graph()
    # The circle issue 20 removed: the episode types' module importing the engine that imports it.
    assert "razor_robot.rollout.episodes" in graph["razor_robot.rollout.pool"]
    graph["razor_robot.rollout.episodes"] = graph["razor_robot.rollout.episodes"] | {"razor_robot.rollout.pool"}
    assert find_cycle(graph) == ["razor_robot.rollout.episodes", "razor_robot.rollout.pool",
                                 "razor_robot.rollout.episodes"]


def test_layer_violations_name_upward_and_sideways_imports():
    graph = {"razor_robot.report.stats": {"razor_robot.measure.evaluation"},
             "razor_robot.envs.core": {"razor_robot.policies"},
             "razor_robot.training.sft": {"razor_robot.training.optim", "razor_robot.rollout.episodes"}}
    assert layer_violations(graph) == [
        "razor_robot.envs.core (envs) imports razor_robot.policies (policies)",
        "razor_robot.report.stats (report) imports razor_robot.measure.evaluation (measure)",
    ]


def test_function_body_imports_count(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.b import g\n    return g\n")
    (package / "b.py").write_text("from . import a\n\ndef g():\n    return a\n")
    modules = {"pkg": package / "__init__.py", "pkg.a": package / "a.py", "pkg.b": package / "b.py"}
    graph = {name: set(imports_of(name, path, modules)) for name, path in modules.items()}
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]
