"""Finding installed plugins (entry points, through stevedore) and wiring a run's hooks."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs

GROUPS = {
    "simulators": "autosim.simulators",
    "tasks": "autosim.tasks",
    "estimators": "autosim.estimators",
    "searchers": "autosim.searchers",
    "observers": "autosim.observers",
}


@dataclass
class LoadFailure:
    group: str
    name: str
    target: str
    reason: str


@dataclass
class Registry:
    """Installed plugins by kind (``simulators``, ``tasks``, ...) and the ones that failed."""

    plugins: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: {} for k in GROUPS})
    targets: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in GROUPS})
    versions: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in GROUPS})
    """``"<distribution> <version>"`` that ships each plugin (empty when unknown)."""
    failures: list[LoadFailure] = field(default_factory=list)

    def get(self, kind: str, name: str) -> Any:
        found = self.plugins[kind].get(name)
        if found is None:
            failed = [f for f in self.failures if f.group == kind and f.name == name]
            if failed:
                raise LookupError(f"{kind[:-1]} {name!r} is installed but failed to load: {failed[0].reason}")
            known = ", ".join(sorted(self.plugins[kind])) or "none"
            raise LookupError(f"{name!r} is not an installed {kind[:-1]}; installed: {known}")
        return found

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {kind: [{"name": n, "target": self.targets[kind][n],
                                       "distribution": self.versions[kind].get(n, "")} for n in sorted(names)]
                               for kind, names in self.plugins.items()}
        out["failed"] = [f.__dict__ for f in self.failures]
        return out


def installed_names(kinds: tuple[str, ...] = tuple(GROUPS)) -> dict[str, dict[str, str]]:
    """Every installed plugin's name and target by kind, from the entry-point metadata alone
    (nothing is imported, so a plugin that would fail to load is listed too)."""
    return {kind: {ep.name: ep.value for ep in metadata.entry_points(group=GROUPS[kind])} for kind in kinds}


def load_registry(kinds: tuple[str, ...] = tuple(GROUPS), *, names: Collection[str] | None = None) -> Registry:
    """Load every plugin of the given kinds (only those called one of ``names``, when given:
    the others are not imported); a plugin that fails is recorded, never raised."""
    from stevedore import ExtensionManager, NamedExtensionManager

    registry = Registry()
    for kind in kinds:
        group = GROUPS[kind]

        def on_failure(_manager: Any, entry_point: Any, error: BaseException, kind: str = kind) -> None:
            registry.failures.append(LoadFailure(kind, entry_point.name, entry_point.value,
                                                 f"{type(error).__name__}: {error}"))

        # stevedore keeps a group's entry points for the life of the process; a registry must
        # also see plugins installed (or put on sys.path) since the last one was loaded.
        getattr(ExtensionManager, "ENTRY_POINT_CACHE", {}).pop(group, None)
        if names is None:
            manager = ExtensionManager(group, invoke_on_load=False, on_load_failure_callback=on_failure)
        else:
            manager = NamedExtensionManager(group, list(names), invoke_on_load=False,
                                            on_load_failure_callback=on_failure,
                                            on_missing_entrypoints_callback=lambda _missing: None)
        for ext in manager:
            registry.plugins[kind][ext.name] = ext.plugin
            registry.targets[kind][ext.name] = ext.entry_point.value
        # stevedore's cached entry points carry no distribution; importlib.metadata's do.
        for entry_point in metadata.entry_points(group=group):
            if entry_point.dist is not None and entry_point.name in registry.plugins[kind]:
                registry.versions[kind][entry_point.name] = f"{entry_point.dist.name} {entry_point.dist.version}"
    return registry


HEAVY_MODULES = ("torch", "torchvision", "torchmetrics", "numpy", "bpy", "ray", "matplotlib")
"""What loading an entry point must not import (docs/plugins.md, "Light entry points")."""

_HEAVY_CHECK = """
import json, sys
from importlib import metadata
from autosim_core.plugins import GROUPS, load_registry

dist, heavy = sys.argv[1], sys.argv[2:]
names = {ep.name for group in GROUPS.values() for ep in metadata.entry_points(group=group)
         if ep.dist is not None and ep.dist.name == dist}
registry = load_registry(names=names) if names else None
print(json.dumps({"names": sorted(names), "failures": [f.__dict__ for f in registry.failures] if registry else [],
                  "heavy": [m for m in heavy if m in sys.modules]}))
"""


def heavy_imports(distribution: str, heavy: tuple[str, ...] = HEAVY_MODULES) -> list[str]:
    """The modules of ``heavy`` that loading the entry points of ``distribution`` imports, found in a
    fresh interpreter: ``[]`` when its entry points are light. RuntimeError when the distribution
    declares no entry point of autosim's or one of them fails to load."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _HEAVY_CHECK, distribution, *heavy], capture_output=True,
                          text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"loading the entry points of {distribution!r} failed: {proc.stderr.strip()}")
    found = json.loads(proc.stdout.splitlines()[-1])
    if not found["names"]:
        raise RuntimeError(f"{distribution!r} declares no entry point of autosim's (is it installed?)")
    if found["failures"]:
        raise RuntimeError(f"entry points of {distribution!r} failed to load: {found['failures']}")
    return list(found["heavy"])


def hook_signatures(plugin: Any) -> dict[str, tuple[str, ...]]:
    """The hooks ``plugin`` implements, each with the arguments it declares: what a light entry
    point (docs/plugins.md) must declare exactly as the implementation it stands for does."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(plugin, name="plugin")
    return {caller.name: tuple(impl.argnames) for caller in pm.get_hookcallers(plugin) or []
            for impl in caller.get_hookimpls() if impl.plugin_name == "plugin"}


def plugin_manager(*plugins: tuple[str, Any]) -> pluggy.PluginManager:
    """One plugin manager with the hookspecs, the core's defaults and the named plugins."""
    from .defaults import core_defaults

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(core_defaults, name="core-defaults")
    for role, plugin in plugins:
        if pm.is_registered(plugin):
            raise ValueError(f"the same plugin object serves two roles ({role}); give each role its own object")
        pm.register(plugin, name=role)
    return pm


def has_impl(pm: pluggy.PluginManager, hook: str, plugin_name: str) -> bool:
    return any(impl.plugin_name == plugin_name for impl in getattr(pm.hook, hook).get_hookimpls())
