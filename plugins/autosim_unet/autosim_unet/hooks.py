"""The ``unet`` task's entry point (``autosim.tasks: unet``).

A light object: each hook imports ``autosim_unet.plugin`` (the model, the metrics, torch) on
its first call and asks that module's ``unet_task``, so that finding the installed plugins
imports no torch (docs/plugins.md of autosim-core, "Light entry points").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autosim_core import hookimpl

if TYPE_CHECKING:
    import torch
    from autosim_core import Batch, Example
    from pydantic import BaseModel

    from .plugin import ConfusionAccumulator, UNetSettings, UNetTask


def _impl() -> UNetTask:
    from .plugin import unet_task

    return unet_task


class UNetTask:
    """Hook implementations of the ``unet`` task (entry point ``autosim.tasks: unet``)."""

    @hookimpl
    def task_settings_model(self) -> type[BaseModel]:
        return _impl().task_settings_model()

    @hookimpl
    def apply_labels(self, settings: Any, labels: list[str]) -> UNetSettings:
        return _impl().apply_labels(settings=settings, labels=labels)

    @hookimpl
    def create_model(self, settings: Any) -> torch.nn.Module:
        return _impl().create_model(settings=settings)

    @hookimpl
    def collate(self, examples: list[Example], settings: Any) -> Batch:
        return _impl().collate(examples=examples, settings=settings)

    @hookimpl
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, settings: Any) -> torch.Tensor:
        return _impl().loss(outputs=outputs, targets=targets, settings=settings)

    @hookimpl
    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor, settings: Any) -> dict[str, float]:
        return _impl().evaluate(outputs=outputs, targets=targets, settings=settings)

    @hookimpl
    def metric_accumulator(self, settings: Any) -> ConfusionAccumulator:
        return _impl().metric_accumulator(settings=settings)

    @hookimpl
    def load_dataset(self, path: str, mask: str | None, settings: Any) -> list[Example]:
        return _impl().load_dataset(path=path, mask=mask, settings=settings)


unet_task = UNetTask()
