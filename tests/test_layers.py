"""The package's import graph: imports run down the layers, and there are no cycles.

The layers follow the data flow (DESIGN.md, "Layout"): the command line on top, then
the pipeline and the report, then the stages, then the engines, then the data and the
models, and at the bottom the run directory, the machine and the job.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fmnist"

# Top-level module or package of fmnist -> its layer; a module may import only from a
# lower layer, or from its own package (a stage package's modules import each other).
LAYERS = {
    "__main__": 6,
    "cli": 5,
    "pipeline": 4,
    "report": 4,
    "train": 3,
    "evaluate": 3,
    "bench": 3,
    "scoring": 3,
    "engines": 2,
    "data": 1,
    "architectures": 1,
    "plots": 1,
    "probabilities": 1,
    "recipes": 1,
    "training_data": 1,
    "io": 0,
    "faults": 0,
    "manifest": 0,
    "system": 0,
    "jobenv": 0,
    "nodetypes": 0,
    "resources": 0,
    "__init__": 0,
}
# Within the two lowest layers, modules import one another in this order only; the
# stages of one layer (train, scoring, bench, ...) never import each other.
WITHIN_LAYER_ORDER = {
    0: ("__init__", "io", "faults", "system", "manifest", "resources", "nodetypes", "jobenv"),
    1: ("probabilities", "data", "architectures", "plots", "training_data", "recipes"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The fmnist modules ``path`` imports, at any depth (lazy imports in functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fmnist"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "fmnist":  # from fmnist import jobenv
                found.update(f"fmnist.{a.name}" for a in node.names)
            elif node.module.startswith("fmnist."):
                found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        # `from fmnist.engines import create_engine` names the package: an edge to it.
        graph[name] = {m for m in imports_of(path) if m in modules and m != name}
    return graph


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    unplaced = sorted({top(m) for m in import_graph()} - set(LAYERS))
    assert not unplaced, f"give these a layer in tests/test_layers.py: {unplaced}"


def test_imports_run_down_the_layers():
    upward = []
    for module, imported in import_graph().items():
        for target in imported:
            here, there = top(module), top(target)
            if here == there:
                continue
            if LAYERS[there] > LAYERS[here] or (
                LAYERS[there] == LAYERS[here] and not _within_layer_allows(here, there)
            ):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def _within_layer_allows(here: str, there: str) -> bool:
    order = WITHIN_LAYER_ORDER.get(LAYERS[here])
    return bool(order) and order.index(there) < order.index(here)


def test_no_import_cycles():
    graph = import_graph()
    cycles = []

    def visit(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        for target in sorted(graph[node]):
            if target in on_path:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in done:
                on_path.add(target)
                visit(target, [*path, target], on_path, done)
                on_path.discard(target)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], {start}, done)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from fmnist.engines import create_engine", {"fmnist.engines"}),
        ("def f():\n    from fmnist.scoring.score import score_shards", {"fmnist.scoring.score"}),
        ("from fmnist import jobenv", {"fmnist.jobenv"}),
        ("import numpy as np", set()),
    ],
)
def test_imports_are_found_at_any_depth(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert imports_of(path) == expected
