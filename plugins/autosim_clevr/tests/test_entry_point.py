"""The entry points name the light ``autosim_clevr.hooks``: registering them imports no torch, and each
light object declares the hooks of the implementation it stands for."""

from __future__ import annotations

import subprocess
import sys

from autosim_core.plugins import hook_signatures

from autosim_clevr import hooks

# docs/plugins.md of autosim-core, "Light entry points": the check every plugin should have.
LIGHT_REGISTRATION = """
import sys
from importlib import metadata
from autosim_core.plugins import GROUPS, load_registry

names = {ep.name for group in GROUPS.values() for ep in metadata.entry_points(group=group)
         if ep.dist is not None and ep.dist.name == "autosim-clevr"}
assert names, "no entry points of autosim-clevr"
registry = load_registry(names=names)
assert not registry.failures, registry.failures
heavy = sorted(m for m in ("torch", "torchvision", "torchmetrics", "numpy", "bpy", "ray", "matplotlib")
               if m in sys.modules)
assert not heavy, f"registering autosim-clevr imported {heavy}"
"""


def test_registering_the_plugin_imports_no_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", LIGHT_REGISTRATION], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_light_object_declares_the_hooks_of_the_simulator() -> None:
    from autosim_clevr import plugin

    assert hook_signatures(hooks.clevr_simulator) == hook_signatures(plugin.clevr_simulator)
    assert hooks.clevr_simulator.simulator_settings_model() is plugin.ClevrSettings
