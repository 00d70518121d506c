"""The entry points name the light ``autosim_arnold.hooks``: registering them imports no torch, and each
light object declares the hooks of the implementation it stands for."""

from __future__ import annotations

from autosim_core.plugins import heavy_imports, hook_signatures

from autosim_arnold import hooks


def test_registering_the_plugin_imports_no_torch() -> None:
    assert heavy_imports("autosim-arnold") == []


def test_the_light_object_declares_the_hooks_of_the_simulator() -> None:
    from autosim_arnold import params, plugin

    assert hook_signatures(hooks.arnold_simulator) == hook_signatures(plugin.arnold_simulator)
    assert hooks.arnold_simulator.simulator_settings_model() is params.ArnoldSettings
