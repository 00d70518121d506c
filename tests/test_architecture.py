"""The core's import graph, read from its source: no module imports another that imports it
back (at any depth, lazy imports inside functions and TYPE_CHECKING blocks included), and the
run's parts never import the loop (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "autosim_core"


def module_name(path: Path) -> str:
    """``searchers``, ``builtin.toy``: a core module's name inside the package."""
    parts = list(path.relative_to(CORE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_imports() -> dict[str, set[str]]:
    """module -> the autosim_core modules it imports anywhere in its file."""
    names = {module_name(path) for path in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(CORE.rglob("*.py")):
        name = module_name(path)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[:len(package) - node.level + 1]
                stem = [*base, *(node.module.split(".") if node.module else [])]
                targets = [".".join(stem)] + [".".join([*stem, alias.name]) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autosim_core"):
                stem = node.module.split(".")[1:]
                targets = [".".join(stem)] + [".".join([*stem, alias.name]) for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name.removeprefix("autosim_core.") for a in node.names
                           if a.name.startswith("autosim_core.")]
            found.update(t for t in targets if t in names)
        graph[name] = found - {name, ""}
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
    assert {"run", "scenes", "training", "checks", "rundir", "clock", "contracts", "builtin.searchers"} <= set(graph)
    assert cycles(graph) == []


def test_the_parts_and_the_searchers_stand_below_the_loop() -> None:
    graph = core_imports()
    for module in ("contracts", "checks", "clock", "scenes", "training", "cache", "rundir", "searchers", "blackbox",
                   "estimators", "hookspecs", "executors"):
        assert "run" not in graph[module], module
    assert graph["contracts"] <= {"hypergrad", "pathwise", "config", "records", "space"}
    assert graph["pathwise"] <= {"hypergrad", "records", "space"}
    assert graph["clock"] == set()
