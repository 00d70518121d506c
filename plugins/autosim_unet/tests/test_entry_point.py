"""The entry points name the light ``autosim_unet.hooks``: registering them imports no torch, and each
light object declares the hooks of the implementation it stands for."""

from __future__ import annotations

import subprocess
import sys

import pytest
from autosim_core.plugins import hook_signatures

from autosim_unet import hooks

# docs/plugins.md of autosim-core, "Light entry points": the check every plugin should have.
LIGHT_REGISTRATION = """
import sys
from importlib import metadata
from autosim_core.plugins import GROUPS, load_registry

names = {ep.name for group in GROUPS.values() for ep in metadata.entry_points(group=group)
         if ep.dist is not None and ep.dist.name == "autosim-unet"}
assert names, "no entry points of autosim-unet"
registry = load_registry(names=names)
assert not registry.failures, registry.failures
heavy = sorted(m for m in ("torch", "torchvision", "torchmetrics", "numpy", "bpy", "ray", "matplotlib")
               if m in sys.modules)
assert not heavy, f"registering autosim-unet imported {heavy}"
"""


def test_registering_the_plugin_imports_no_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", LIGHT_REGISTRATION], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_light_object_declares_the_hooks_of_the_task() -> None:
    from autosim_unet import plugin

    assert hook_signatures(hooks.unet_task) == hook_signatures(plugin.unet_task)
    assert hooks.unet_task.task_settings_model() is plugin.UNetSettings


def test_the_package_still_exports_its_names() -> None:
    import autosim_unet
    from autosim_unet import metrics, model, plugin

    for name in autosim_unet.__all__:
        assert getattr(autosim_unet, name) is not None, name
    assert autosim_unet.UNet is model.UNet and autosim_unet.unet_task is plugin.unet_task
    assert autosim_unet.confusion_matrix is metrics.confusion_matrix
    with pytest.raises(AttributeError):
        _ = autosim_unet.no_such_name
