"""The toy simulator's and task's entry points (``toy-gaussians``, ``toy-logistic``): settings
answer at once; every other hook imports ``autosim_core.toy`` (torch) on first call and asks
its plugin object."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..builtin_settings import ToySimulatorSettings, ToyTaskSettings
from ..hookspecs import hookimpl

if TYPE_CHECKING:
    import torch

    from ..records import Batch, Example
    from ..space import ParameterSpace


class ToySimulator:
    @hookimpl
    def simulator_settings_model(self) -> type[BaseModel]:
        return ToySimulatorSettings

    @hookimpl
    def labels(self) -> list[str]:
        from ..toy import toy_simulator

        return toy_simulator.labels()

    @hookimpl
    def parameter_space(self) -> ParameterSpace:
        from ..toy import toy_simulator

        return toy_simulator.parameter_space()

    @hookimpl
    def presets(self) -> dict[str, dict[str, dict[str, Any]]]:
        from ..toy import toy_simulator

        return toy_simulator.presets()

    @hookimpl
    def render(self, scenes: list[dict[str, Any]]) -> list[Example]:
        from ..toy import toy_simulator

        return toy_simulator.render(scenes=scenes)


class ToyTask:
    @hookimpl
    def task_settings_model(self) -> type[BaseModel]:
        return ToyTaskSettings

    @hookimpl
    def create_model(self, settings: ToyTaskSettings) -> torch.nn.Module:
        from ..toy import toy_task

        return toy_task.create_model(settings=settings)

    @hookimpl
    def collate(self, examples: list[Example]) -> Batch:
        from ..toy import toy_task

        return toy_task.collate(examples=examples)

    @hookimpl
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from ..toy import toy_task

        return toy_task.loss(outputs=outputs, targets=targets)

    @hookimpl
    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        from ..toy import toy_task

        return toy_task.evaluate(outputs=outputs, targets=targets)


toy_simulator = ToySimulator()
toy_task = ToyTask()
