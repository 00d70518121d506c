"""The core's import graph, read from its source: no module imports another that imports it
back (at any depth, lazy imports inside functions and TYPE_CHECKING blocks included), and the
run's parts never import the loop (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "autosim_core"


def core_imports() -> dict[str, set[str]]:
    """module -> the autosim_core modules it imports anywhere in its file."""
    graph: dict[str, set[str]] = {}
    for path in sorted(CORE.glob("*.py")):
        name = path.stem
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autosim_core."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("autosim_core."))
        graph[name] = {m for m in found if (CORE / f"{m}.py").exists() and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_graph_reader_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_core_has_no_import_circle() -> None:
    graph = core_imports()
    assert {"run", "scenes", "training", "checks", "rundir", "clock", "contracts"} <= set(graph)
    assert cycles(graph) == []


def test_the_parts_and_the_searchers_stand_below_the_loop() -> None:
    graph = core_imports()
    for module in ("contracts", "checks", "clock", "scenes", "training", "cache", "rundir", "searchers", "blackbox",
                   "estimators", "hookspecs", "executors"):
        assert "run" not in graph[module], module
    assert graph["contracts"] <= {"hypergrad", "config", "records", "space"}
    assert graph["clock"] == set()
