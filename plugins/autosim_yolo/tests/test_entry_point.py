"""The entry points name the light ``autosim_yolo.hooks``: registering them imports no torch, and each
light object declares the hooks of the implementation it stands for."""

from __future__ import annotations

import subprocess
import sys

import pytest
from autosim_core.plugins import hook_signatures

from autosim_yolo import hooks

# docs/plugins.md of autosim-core, "Light entry points": the check every plugin should have.
LIGHT_REGISTRATION = """
import sys
from importlib import metadata
from autosim_core.plugins import GROUPS, load_registry

names = {ep.name for group in GROUPS.values() for ep in metadata.entry_points(group=group)
         if ep.dist is not None and ep.dist.name == "autosim-yolo"}
assert names, "no entry points of autosim-yolo"
registry = load_registry(names=names)
assert not registry.failures, registry.failures
heavy = sorted(m for m in ("torch", "torchvision", "torchmetrics", "numpy", "bpy", "ray", "matplotlib")
               if m in sys.modules)
assert not heavy, f"registering autosim-yolo imported {heavy}"
"""


def test_registering_the_plugin_imports_no_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", LIGHT_REGISTRATION], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", ["yolo_task", "faster_rcnn_task", "shapes_simulator"])
def test_a_light_object_declares_the_hooks_of_its_implementation(name: str) -> None:
    from autosim_yolo import plugin, shapes

    light, real = getattr(hooks, name), getattr(shapes if name == "shapes_simulator" else plugin, name)
    assert hook_signatures(light) == hook_signatures(real)
    hook = "simulator_settings_model" if name == "shapes_simulator" else "task_settings_model"
    assert getattr(light, hook)() is getattr(real, hook)()
