"""The cache of rendered validation and test sets: where it lives, its keys, listing and clearing.

A run renders an evaluation set from a simulator preset once and keeps it as
``<cache>/<simulator>-<validation|test>-<digest>.pt``. The digest covers everything the set
depends on: the simulator's name, its distribution's version, a hash of the source of the
package that implements its hooks (so that editing ``render`` in an editable install renders
the set anew), its settings, the preset's space, the count and the seed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import Example

CACHE_FILE = re.compile(r"^(?P<simulator>.+)-(?P<key>validation|test)-(?P<digest>[0-9a-f]{20})"
                        r"\.(?:pt|tmp\d+)$")
"""Names of the files the cache holds (``.tmp<pid>`` ones are left by interrupted writes)."""

MAX_SOURCE_FILES = 2000
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$AUTOSIM_CACHE``, else ``$XDG_CACHE_HOME/autosim``, else ``~/.cache/autosim``."""
    root = os.environ.get("AUTOSIM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "autosim")
    return Path(root)


def _source_files(module_name: str) -> list[Path]:
    """The .py files of the top-level package that holds ``module_name`` (or the module's own
    file when it is not in a package)."""
    module = sys.modules.get(module_name)
    top = module_name.split(".")[0]
    top_module = sys.modules.get(top)
    if top_module is None:
        spec = importlib.util.find_spec(top) if module_name != "__main__" else None
        locations = list(spec.submodule_search_locations or []) if spec else []
    else:
        locations = list(getattr(top_module, "__path__", []) or [])
    files: list[Path] = []
    for location in locations:
        files += sorted(Path(location).rglob("*.py"))
    if not files:
        path = getattr(module, "__file__", None)
        if path:
            files = [Path(path)]
    return files[:MAX_SOURCE_FILES]


def _defining_modules(plugin: Any, functions: Sequence[Any]) -> list[str]:
    names = set()
    if inspect.ismodule(plugin):
        names.add(plugin.__name__)
    else:
        names.add(type(plugin).__module__)
    for function in functions:
        module = getattr(inspect.unwrap(function), "__module__", None)
        if module:
            names.add(module)
    return sorted(names)


def source_fingerprint(plugin: Any, functions: Sequence[Any] = ()) -> str:
    """A hash of the source files of the package(s) defining ``plugin`` and its hook
    ``functions``: it changes whenever their code is edited, installed editable or not.

    Only ``.py`` files count; data files a renderer reads (meshes, shaders) do not, so after
    editing those, run ``autosim cache clear``. Empty when no source file can be found.
    """
    digest = hashlib.sha256()
    seen: set[Path] = set()
    for module_name in _defining_modules(plugin, functions):
        for path in _source_files(module_name):
            resolved = path.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            try:
                content = resolved.read_bytes()
            except OSError:
                continue
            digest.update(str(path.name).encode() + b"\0" + hashlib.sha256(content).digest())
    return digest.hexdigest()[:20] if seen else ""


@dataclass(frozen=True)
class SetKey:
    """Where a rendered evaluation set is cached, and what it was rendered from."""

    path: Path
    fingerprint: str


def set_key(cache_dir: Path, *, simulator: str, key: str, simulator_version: str, simulator_source: str,
            settings: Any, space: dict[str, Any], count: int, seed: int) -> SetKey:
    """The cache entry of the ``key`` set ("validation" or "test") of ``simulator``.

    The simulator's distribution, version and source are part of the key: an upgraded or edited
    renderer must not be scored against sets its previous code rendered.
    """
    fingerprint = json.dumps({"v": CACHE_VERSION, "simulator": simulator, "simulator_version": simulator_version,
                              "simulator_source": simulator_source, "settings": settings, "space": space,
                              "count": count, "seed": seed}, sort_keys=True, default=str)
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:20]
    return SetKey(cache_dir / f"{simulator}-{key}-{digest}.pt", fingerprint)


def load_set(entry: SetKey) -> list[Example] | None:
    """The cached examples of ``entry`` (None when it is not cached, or when the file cannot be
    read: a damaged set is removed, and rendered again by its caller)."""
    if not entry.path.exists():
        return None
    import logging

    import torch

    from .records import Example

    try:
        stored = torch.load(entry.path, weights_only=True)
        return [Example.from_dict(d) for d in stored["examples"]]
    except Exception as exc:  # truncated or foreign: torch and from_dict raise several kinds
        logging.getLogger("autosim").warning("the cached set %s cannot be read (truncated, or not a cached set: "
                                             "%s); rendering it again", entry.path, type(exc).__name__)
        entry.path.unlink(missing_ok=True)
        return None


def store_set(entry: SetKey, examples: list[Example]) -> None:
    """Caches ``examples`` under ``entry``; a process killed mid-way leaves only a ``.tmp<pid>`` file."""
    import torch

    entry.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"fingerprint": entry.fingerprint, "examples": [e.to_dict() for e in examples]}, tmp)
    os.replace(tmp, entry.path)


@dataclass
class CachedSet:
    path: Path
    simulator: str
    key: str
    size: int
    modified: float


def cached_sets(cache_dir: Path, simulator: str | None = None) -> list[CachedSet]:
    """The cached evaluation sets in ``cache_dir`` (of one simulator when given), by name."""
    if not cache_dir.is_dir():
        return []
    out = []
    for path in sorted(cache_dir.iterdir()):
        match = CACHE_FILE.match(path.name)
        if match is None or not path.is_file():
            continue
        if simulator is not None and match["simulator"] != simulator:
            continue
        stat = path.stat()
        out.append(CachedSet(path, match["simulator"], match["key"], stat.st_size, stat.st_mtime))
    return out


def clear_cache(cache_dir: Path, simulator: str | None = None) -> list[CachedSet]:
    """Remove the cached evaluation sets (of one simulator when given); returns what went.
    Files of other names in ``cache_dir`` are left alone."""
    removed = []
    for entry in cached_sets(cache_dir, simulator):
        try:
            entry.path.unlink()
        except FileNotFoundError:
            continue
        removed.append(entry)
    return removed
