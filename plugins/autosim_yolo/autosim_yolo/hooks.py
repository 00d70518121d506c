"""The entry points of autosim-yolo: the ``yolo`` and ``faster-rcnn`` tasks and the ``shapes``
simulator (``autosim.tasks``, ``autosim.simulators``).

Light objects: each hook imports the implementation (``autosim_yolo.plugin`` or
``autosim_yolo.shapes``, and torch, torchvision and torchmetrics with them) on its first call
and asks that module's plugin object, so that finding the installed plugins imports none of
them (docs/plugins.md of autosim-core, "Light entry points").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from autosim_core import hookimpl

if TYPE_CHECKING:
    import torch
    from autosim_core import Batch, Example, ParameterSpace
    from pydantic import BaseModel


class _Light:
    implementation: str
    """``module:attribute`` of the plugin object the hooks ask."""

    def _impl(self) -> Any:
        module, _, name = self.implementation.partition(":")
        return getattr(importlib.import_module(module), name)


class _DetectionTask(_Light):
    @hookimpl
    def task_settings_model(self) -> type[BaseModel]:
        return self._impl().task_settings_model()

    @hookimpl
    def apply_labels(self, settings: Any, labels: list[str]) -> Any:
        return self._impl().apply_labels(settings=settings, labels=labels)

    @hookimpl
    def create_model(self, settings: Any) -> torch.nn.Module:
        return self._impl().create_model(settings=settings)

    @hookimpl
    def collate(self, examples: list[Example], settings: Any) -> Batch:
        return self._impl().collate(examples=examples, settings=settings)

    @hookimpl
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, settings: Any) -> torch.Tensor:
        return self._impl().loss(outputs=outputs, targets=targets, settings=settings)

    @hookimpl
    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor, settings: Any) -> dict[str, float]:
        return self._impl().evaluate(outputs=outputs, targets=targets, settings=settings)

    @hookimpl
    def metric_accumulator(self, settings: Any) -> Any:
        return self._impl().metric_accumulator(settings=settings)

    @hookimpl
    def load_dataset(self, path: str, settings: Any) -> list[Example]:
        return self._impl().load_dataset(path=path, settings=settings)


class YoloTask(_DetectionTask):
    """``autosim.tasks: yolo``: YOLOv3-tiny / YOLOv3-spp scored by COCO mAP@0.5."""

    implementation = "autosim_yolo.plugin:yolo_task"


class FasterRCNNTask(_DetectionTask):
    """``autosim.tasks: faster-rcnn``: torchvision's MobileNetV3-FPN Faster R-CNN, per-image losses."""

    implementation = "autosim_yolo.plugin:faster_rcnn_task"


class ShapesSimulator(_Light):
    """``autosim.simulators: shapes``: coloured circles, squares and triangles on textured backgrounds."""

    implementation = "autosim_yolo.shapes:shapes_simulator"

    @hookimpl
    def simulator_settings_model(self) -> type[BaseModel]:
        return self._impl().simulator_settings_model()

    @hookimpl
    def labels(self) -> list[str]:
        """Mask id i + 1 and object category ``SHAPE_CLASSES[i]``."""
        return self._impl().labels()

    @hookimpl
    def parameter_space(self) -> ParameterSpace:
        return self._impl().parameter_space()

    @hookimpl
    def presets(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self._impl().presets()

    @hookimpl
    def render(self, scenes: list[dict[str, Any]], settings: Any) -> list[Example]:
        return self._impl().render(scenes=scenes, settings=settings)


yolo_task = YoloTask()
faster_rcnn_task = FasterRCNNTask()
shapes_simulator = ShapesSimulator()
