"""The entry point names the light ``autosim_nuclei.hooks``: registering the plugin imports no torch."""

from __future__ import annotations

from autosim_core.plugins import heavy_imports


def test_registering_the_plugin_imports_no_torch() -> None:
    assert heavy_imports("autosim-nuclei") == []
