"""The ``arnold`` simulator's entry point (``autosim.simulators: arnold``).

A light object: each hook imports ``autosim_arnold.plugin`` (layouts, meshes, numpy, torch;
Blender only when rendering) on its first call and asks that module's ``arnold_simulator``, so
that finding the installed plugins imports none of them (docs/plugins.md of autosim-core,
"Light entry points").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autosim_core import hookimpl

if TYPE_CHECKING:
    from autosim_core import Example, ParameterSpace
    from pydantic import BaseModel

    from .plugin import ArnoldSimulator


def _impl() -> ArnoldSimulator:
    from .plugin import arnold_simulator

    return arnold_simulator


class ArnoldSimulator:
    @hookimpl
    def simulator_settings_model(self) -> type[BaseModel]:
        return _impl().simulator_settings_model()

    @hookimpl
    def labels(self, settings: Any) -> list[str]:
        """The object classes (sorted names: the shipped ones, or a BOP folder's obj_* models)."""
        return _impl().labels(settings=settings)

    @hookimpl
    def parameter_space(self, settings: Any) -> ParameterSpace:
        return _impl().parameter_space(settings=settings)

    @hookimpl
    def presets(self, settings: Any) -> dict[str, dict[str, dict[str, Any]]]:
        return _impl().presets(settings=settings)

    @hookimpl
    def render(self, scenes: list[dict[str, Any]], settings: Any) -> list[Example]:
        return _impl().render(scenes=scenes, settings=settings)


arnold_simulator = ArnoldSimulator()
