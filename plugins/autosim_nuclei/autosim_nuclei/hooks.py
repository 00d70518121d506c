"""The ``nuclei`` simulator's entry point (``autosim.simulators: nuclei``).

Settings, space, presets and labels are light (pydantic and autosim_core); ``render`` imports
``autosim_nuclei.render`` (torch) on its first call (docs/plugins.md, "Light entry points").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autosim_core import ParameterSpace, hookimpl

from .params import NucleiSettings, labels, parameter_space, presets

if TYPE_CHECKING:
    from autosim_core import Example
    from pydantic import BaseModel


def _settings(settings: Any) -> NucleiSettings:
    """The hooks also take a plain dict (or nothing), e.g. when called outside a run."""
    return settings if isinstance(settings, NucleiSettings) else NucleiSettings.model_validate(settings or {})


class NucleiSimulator:
    """Hook implementations of the ``nuclei`` simulator."""

    @hookimpl
    def simulator_settings_model(self) -> type[BaseModel]:
        return NucleiSettings

    @hookimpl
    def parameter_space(self, settings: Any) -> ParameterSpace:
        return parameter_space(_settings(settings))

    @hookimpl
    def presets(self, settings: Any) -> dict[str, dict[str, dict[str, Any]]]:
        return presets(_settings(settings))

    @hookimpl
    def labels(self, settings: Any) -> list[str]:
        return labels(_settings(settings))

    @hookimpl
    def render(self, scenes: list[dict[str, Any]], settings: Any) -> list[Example]:
        from .render import render_scenes

        return render_scenes(scenes, _settings(settings))


nuclei_simulator = NucleiSimulator()
