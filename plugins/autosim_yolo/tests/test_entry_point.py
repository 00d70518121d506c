"""The entry points name the light ``autosim_yolo.hooks``: registering them imports no torch, and each
light object declares the hooks of the implementation it stands for."""

from __future__ import annotations

import pytest
from autosim_core.plugins import heavy_imports, hook_signatures

from autosim_yolo import hooks


def test_registering_the_plugin_imports_no_torch() -> None:
    assert heavy_imports("autosim-yolo") == []


@pytest.mark.parametrize("name", ["yolo_task", "faster_rcnn_task", "shapes_simulator"])
def test_a_light_object_declares_the_hooks_of_its_implementation(name: str) -> None:
    from autosim_yolo import plugin, shapes

    light, real = getattr(hooks, name), getattr(shapes if name == "shapes_simulator" else plugin, name)
    assert hook_signatures(light) == hook_signatures(real)
    hook = "simulator_settings_model" if name == "shapes_simulator" else "task_settings_model"
    assert getattr(light, hook)() is getattr(real, hook)()
