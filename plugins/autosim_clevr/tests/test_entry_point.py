"""The entry points name the light ``autosim_clevr.hooks``: registering them imports no torch, and each
light object declares the hooks of the implementation it stands for."""

from __future__ import annotations

from autosim_core.plugins import heavy_imports, hook_signatures

from autosim_clevr import hooks


def test_registering_the_plugin_imports_no_torch() -> None:
    assert heavy_imports("autosim-clevr") == []


def test_the_light_object_declares_the_hooks_of_the_simulator() -> None:
    from autosim_clevr import plugin

    assert hook_signatures(hooks.clevr_simulator) == hook_signatures(plugin.clevr_simulator)
    assert hooks.clevr_simulator.simulator_settings_model() is plugin.ClevrSettings
