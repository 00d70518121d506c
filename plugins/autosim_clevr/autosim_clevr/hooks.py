"""The ``clevr`` simulator's entry point (``autosim.simulators: clevr``).

A light object: each hook imports ``autosim_clevr.plugin`` (the renderer, and torch with it)
on its first call and asks that module's ``clevr_simulator``, so that finding the installed
plugins imports no torch (docs/plugins.md of autosim-core, "Light entry points").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autosim_core import hookimpl

if TYPE_CHECKING:
    import torch
    from autosim_core import Example, ParameterSpace
    from pydantic import BaseModel

    from .plugin import ClevrSimulator


def _impl() -> ClevrSimulator:
    from .plugin import clevr_simulator

    return clevr_simulator


class ClevrSimulator:
    @hookimpl
    def simulator_settings_model(self) -> type[BaseModel]:
        return _impl().simulator_settings_model()

    @hookimpl
    def labels(self) -> list[str]:
        """Mask ids 1 sphere, 2 cube, 3 cylinder (0 background); objects' ``category``."""
        return _impl().labels()

    @hookimpl
    def parameter_space(self) -> ParameterSpace:
        return _impl().parameter_space()

    @hookimpl
    def presets(self) -> dict[str, dict[str, dict[str, Any]]]:
        return _impl().presets()

    @hookimpl
    def render(self, scenes: list[dict[str, Any]], settings: Any) -> list[Example]:
        return _impl().render(scenes=scenes, settings=settings)

    @hookimpl
    def differentiable_parameters(self, settings: Any) -> list[str] | None:
        return _impl().differentiable_parameters(settings=settings)

    @hookimpl
    def render_differentiable(self, scenes: list[dict[str, Any]], values: dict[str, torch.Tensor],
                              settings: Any) -> list[Example]:
        return _impl().render_differentiable(scenes=scenes, values=values, settings=settings)


clevr_simulator = ClevrSimulator()
