"""The entry points name the light ``autosim_unet.hooks``: registering them imports no torch, and each
light object declares the hooks of the implementation it stands for."""

from __future__ import annotations

import pytest
from autosim_core.plugins import heavy_imports, hook_signatures

from autosim_unet import hooks


def test_registering_the_plugin_imports_no_torch() -> None:
    assert heavy_imports("autosim-unet") == []


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
