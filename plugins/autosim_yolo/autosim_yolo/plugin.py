"""Hook implementations: the ``yolo`` and ``faster-rcnn`` tasks and the ``shapes`` simulator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from autosim_core.hookspecs import hookimpl
from autosim_core.records import Batch, Example
from pydantic import BaseModel

from .data import load_detection_folder
from .decode import yolo_detections
from .faster_rcnn import build_faster_rcnn, faster_rcnn_detections, faster_rcnn_losses
from .loss import yolo_losses
from .metrics import detection_metrics
from .model import build_yolo
from .settings import CLASSES_FROM_LABELS, DetectionSettings, FasterRCNNSettings, YoloSettings, coerce
from .shapes import shapes_simulator
from .targets import PAD, letterbox, object_rows, pack_targets

__all__ = ["collate_detection", "faster_rcnn_task", "shapes_simulator", "yolo_task"]


def collate_detection(examples: list[Example], settings: DetectionSettings) -> Batch:
    """Images letterboxed to the square input; objects as the padded (B, M, 5) target tensor."""
    if not examples:
        raise ValueError("no examples to collate")
    images, rows = [], []
    for i, example in enumerate(examples):
        where = (example.scene or {}).get("id", i)
        image = example.image
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"example {where!r}: image must be (3, H, W) (or (1, H, W)); got {tuple(image.shape)}")
        # uint8 images are accepted and scaled like the float images renderers return.
        image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        square, scale, offset = letterbox(image, settings.input_size)
        images.append(square)
        rows.append(object_rows(example.objects, settings.classes, scale, offset, where,
                                settings.min_visible_fraction, image_size=(image.shape[1], image.shape[2]),
                                classes_source=settings.classes_source))
    return Batch(torch.stack(images), pack_targets(rows))


class DetectionAccumulator:
    """Detection metrics chunk by chunk: each chunk's raw outputs are decoded to its images'
    detections at once (boxes, scores, labels: a few hundred numbers per image) and only those
    are kept; AP needs every image's detections ranked together, so it is computed at the end."""

    def __init__(self, decode: Callable[[Any], list[dict[str, torch.Tensor]]], classes: list[str]):
        self.decode = decode
        self.classes = classes
        self.detections: list[dict[str, torch.Tensor]] = []
        self.targets: list[torch.Tensor] = []

    def update(self, outputs: Any, targets: torch.Tensor) -> None:
        self.detections.extend({k: v.detach().cpu() for k, v in d.items()} for d in self.decode(outputs))
        self.targets.append(targets.detach().cpu())

    def compute(self) -> dict[str, float]:
        # Chunks of one padded batch share its width, but chunks padded apart need not.
        width = max(t.shape[1] for t in self.targets)
        targets = torch.zeros(sum(t.shape[0] for t in self.targets), width, 5)
        targets[:, :, 4] = PAD
        start = 0
        for t in self.targets:
            targets[start:start + t.shape[0], : t.shape[1]] = t
            start += t.shape[0]
        return detection_metrics(self.detections, targets, self.classes)


class _DetectionTask:
    """The hooks both detectors share; a subclass names its settings and its three functions."""

    settings_model: type[DetectionSettings] = DetectionSettings
    build: Callable[[Any], torch.nn.Module]
    losses: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
    detections: Callable[[torch.Tensor, Any], list[dict[str, torch.Tensor]]]

    def _settings(self, settings: Any) -> Any:
        return coerce(settings, self.settings_model)

    @hookimpl
    def task_settings_model(self) -> type[BaseModel]:
        return self.settings_model

    @hookimpl
    def apply_labels(self, settings: Any, labels: list[str]) -> DetectionSettings:
        """``classes`` = the simulator's labels (class i = labels[i]) unless the config sets them."""
        s = self._settings(settings)
        if "classes" in s.model_fields_set:
            return s
        adapted = self.settings_model.model_validate({**s.model_dump(include=set(s.model_fields_set)),
                                                      "classes": list(labels)})
        adapted._classes_from_labels = CLASSES_FROM_LABELS
        return adapted

    @hookimpl
    def create_model(self, settings: Any) -> torch.nn.Module:
        return self.build(self._settings(settings))

    @hookimpl
    def collate(self, examples: list[Example], settings: Any) -> Batch:
        return collate_detection(examples, self._settings(settings))

    @hookimpl
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, settings: Any) -> torch.Tensor:
        return self.losses(outputs, targets, self._settings(settings))

    @hookimpl
    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor, settings: Any) -> dict[str, float]:
        s = self._settings(settings)
        return detection_metrics(self.detections(outputs, s), targets, s.classes)

    @hookimpl
    def metric_accumulator(self, settings: Any) -> DetectionAccumulator:
        s = self._settings(settings)
        return DetectionAccumulator(lambda outputs: self.detections(outputs, s), s.classes)

    @hookimpl
    def load_dataset(self, path: str, settings: Any) -> list[Example]:
        # Images are shrunk to the network's input on loading: a folder of full-size photos
        # (LM-O's are 640 x 480) would otherwise be kept in memory at full size as floats.
        return load_detection_folder(path, max_size=self._settings(settings).input_size)


class YoloTask(_DetectionTask):
    """``autosim.tasks: yolo``: YOLOv3-tiny / YOLOv3-spp scored by COCO mAP@0.5."""

    settings_model = YoloSettings
    build = staticmethod(build_yolo)
    losses = staticmethod(yolo_losses)
    detections = staticmethod(yolo_detections)


class FasterRCNNTask(_DetectionTask):
    """``autosim.tasks: faster-rcnn``: torchvision's MobileNetV3-FPN Faster R-CNN, per-image losses."""

    settings_model = FasterRCNNSettings
    build = staticmethod(build_faster_rcnn)
    losses = staticmethod(faster_rcnn_losses)
    detections = staticmethod(faster_rcnn_detections)


yolo_task = YoloTask()
faster_rcnn_task = FasterRCNNTask()
