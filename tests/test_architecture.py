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


PLUGINS = CORE.parent / "plugins"


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a file imports anywhere in it (absolute imports; relative ones stay inside)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_plugins_depend_on_the_core_only_and_the_core_on_no_plugin() -> None:
    # What lets every plugin's tests share one environment: no plugin's code can lean on another's.
    packages = {folder.name: next(folder.glob("autosim_*/__init__.py")).parent for folder in PLUGINS.iterdir()
                if folder.is_dir() and any(folder.glob("autosim_*/__init__.py"))}
    assert {"autosim_clevr", "autosim_unet", "autosim_yolo", "autosim_arnold", "autosim_nuclei"} <= set(packages)
    names = {source.name for source in packages.values()}
    for folder, source in packages.items():
        for path in source.rglob("*.py"):
            others = {p for p in imported_packages(path) if p.startswith("autosim_")} - {"autosim_core", source.name}
            assert not others, f"{path.relative_to(PLUGINS)} imports {sorted(others)}"
        declared = (PLUGINS / folder / "pyproject.toml").read_text().split("[project.optional-dependencies]")[0]
        assert not [n for n in names - {source.name} if n.replace("_", "-") in declared], folder
    for path in CORE.rglob("*.py"):
        assert not imported_packages(path) & names, path.relative_to(CORE)


def test_the_import_reader_sees_a_lazy_plugin_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom .x import y\n\ndef f():\n    from autosim_unet.data import load_pair\n")
    assert imported_packages(module) == {"os", "autosim_unet"}
