"""A run's identity covers every training key of the schema (walked, so a key added later cannot be forgotten), and
the package's import graph has no cycles, of modules or of packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from reluvit.run.compose import compose
from reluvit.run.grid import GRID, NOT_TRAINING, identity, leaves, training_values

BASE = OmegaConf.to_container(compose(["data=digits", "model=mini2"]))


def changed(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, list):
        return [*value, value[-1] if value else 1]
    return f"{value}-other"


def with_value(config: dict, path: str, value) -> dict:
    copy = OmegaConf.to_container(OmegaConf.create(config))
    node = copy
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return copy


@pytest.mark.parametrize("path", sorted(leaves(BASE)))
def test_every_schema_key_is_in_the_identity_unless_listed_as_not_training(path):
    value = leaves(BASE)[path]
    other = with_value(BASE, path, changed(value) if value is not None else 1)
    not_training = any(path == key or path.startswith(f"{key}.") for key in NOT_TRAINING)
    assert (identity(other) == identity(BASE)) == not_training, path


def test_grid_keys_are_training_keys():
    assert all(key.path in training_values(BASE) for key in GRID.values())


SRC = Path(__file__).resolve().parents[1] / "src"


def imports() -> dict[str, set[str]]:
    """Module -> the reluvit modules it imports (at any depth of its code)."""
    graph = {}
    for path in (SRC / "reluvit").rglob("*.py"):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reluvit"):
                names = [f"{node.module}.{a.name}" for a in node.names]
                found |= {n for n in names if (SRC / Path(*n.split("."))).with_suffix(".py").exists()} or {node.module}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("reluvit")}
        graph[module] = found - {module}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (its nodes, the first repeated at the end), or None: a depth-first walk."""
    done, path = set(), []

    def visit(node) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if found := visit(target):
                return found
        path.pop()
        done.add(node)
        return None

    return next((found for node in graph if (found := visit(node))), None)


def test_the_import_graph_has_no_cycles():
    graph = imports()
    assert cycle(graph) is None, "import cycle: " + " -> ".join(cycle(graph))
    assert "reluvit.run.train" in graph and graph["reluvit.run.train"]  # the walk saw the package
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the walk finds one


def packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Package (or top-level module) -> the others it imports: ``reluvit.run.train`` counts as ``run``."""
    def package(module: str) -> str:
        return module.split(".")[1] if module.count(".") else module

    found: dict[str, set[str]] = {}
    for module, targets in graph.items():
        found.setdefault(package(module), set()).update(package(t) for t in targets if package(t) != package(module))
    return found


def test_no_package_imports_a_package_that_imports_it_back():
    """Module cycles aside, the packages form layers: data and evaluate below run, run below sweep, report and
    dashboards (a cycle of packages, even through several, is a tangle a newcomer cannot read in layers)."""
    graph = packages(imports())
    assert cycle(graph) is None, "package cycle: " + " -> ".join(cycle(graph))
    assert {"data", "evaluate", "run", "sweep", "report", "dashboards"} <= set(graph)
    assert "run" not in graph["evaluate"] and "dashboards" not in graph["run"]


def test_reading_commands_import_no_framework():
    """`reluvit results`, `status` and `--help` read JSON and YAML: no torch, timm or Lightning."""
    import subprocess
    import sys

    code = ("import sys, reluvit.cli, reluvit.report.rollup, reluvit.report.status, reluvit.sweep.spec; "
            "print(sorted({'torch', 'timm', 'pytorch_lightning'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "[]"
