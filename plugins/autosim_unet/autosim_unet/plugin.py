"""The ``unet`` task: UNet semantic segmentation scored by mean IoU over the shape classes."""

from __future__ import annotations

from typing import Any, Literal

import torch
from autosim_core.hookspecs import hookimpl
from autosim_core.records import Batch, Example
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .data import load_folder, load_pair
from .metrics import confusion_matrix, per_image_cross_entropy, segmentation_metrics
from .model import UNet, conv_layer_count

CLEVR_CLASSES = ["background", "sphere", "cube", "cylinder"]


class UNetSettings(BaseModel):
    """``[task.settings]`` of the ``unet`` task."""

    model_config = ConfigDict(extra="forbid")

    num_classes: int = Field(4, ge=2, description="classes including background (id 0) (default: the number of "
                                                  "class_names, else 1 + the simulator's declared labels, else 4)")
    class_names: list[str] | None = Field(
        None, description="one name per class id, for per-class IoU keys (default: background and the "
                          "simulator's declared labels; else background, sphere, cube, cylinder for 4 classes)")
    in_channels: int = Field(3, ge=1, description="image channels")
    depth: int = Field(1, ge=1, le=6, description="2x down-samplings; 5*depth+3 conv layers (8 by default)")
    width: int = Field(16, ge=1, description="channels of the first level (doubled at each level)")
    freeze: int = Field(0, ge=0, description="number of first conv layers (in forward order) whose "
                                             "parameters are frozen: excluded from training, HVPs and psi's gradient")
    ignore_index: int | None = Field(255, description="mask value of unlabelled pixels, left out of loss and "
                                                      "metrics (None: every pixel is labelled)")
    class_weights: list[float] | None = Field(None, description="per-class weights of the cross-entropy")
    intensity: Literal["dtype", "percentile"] = Field(
        "dtype", description="how real images (load_dataset) scale to [0, 1]: 'dtype' divides integers by their "
        "type's maximum (255 for 8-bit); 'percentile' maps each image's 1st and 99.8th percentiles to 0 and 1 "
        "and clips, as fluorescence microscopy of any bit depth is normalised")
    masks: Literal["classes", "instances", "boundaries"] = Field(
        "classes", description="what the pixel values of real masks are: 'classes' (class ids), 'instances' "
        "(object ids, 0 = background; every object becomes class 1) or 'boundaries' (object ids read as "
        "background 0, interior 1 and the objects' outlines 2, so touching objects stay apart)")

    @model_validator(mode="after")
    def _check(self) -> UNetSettings:
        if self.class_names is not None and "num_classes" not in self.model_fields_set:
            self.num_classes = len(self.class_names)
            self.__pydantic_fields_set__.discard("num_classes")
            if self.num_classes < 2:
                raise ValueError("class_names must name at least 2 classes (background and one more)")
        if self.class_names is None:
            self.class_names = (list(CLEVR_CLASSES) if self.num_classes == len(CLEVR_CLASSES)
                                else ["background"] + [f"class{i}" for i in range(1, self.num_classes)])
            # model_fields_set keeps saying what the user gave (apply_labels reads it).
            self.__pydantic_fields_set__.discard("class_names")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for num_classes = {self.num_classes}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names must be distinct")
        layers = conv_layer_count(self.depth)
        if self.freeze > layers - 1:
            raise ValueError(f"freeze = {self.freeze} leaves nothing to train: a depth-{self.depth} UNet has "
                             f"{layers} conv layers, so freeze must be at most {layers - 1}")
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"ignore_index = {self.ignore_index} is a class id (num_classes = {self.num_classes})")
        if self.class_weights is not None:
            if len(self.class_weights) != self.num_classes:
                raise ValueError(f"class_weights has {len(self.class_weights)} entries for "
                                 f"num_classes = {self.num_classes}")
            if any(w < 0 for w in self.class_weights) or not any(w > 0 for w in self.class_weights):
                raise ValueError("class_weights must be >= 0 and not all 0")
        return self

    @property
    def names(self) -> list[str]:
        assert self.class_names is not None
        return self.class_names


def _settings(settings: Any) -> UNetSettings:
    """The hooks also accept a plain dict (or nothing), e.g. when called outside a run."""
    if isinstance(settings, UNetSettings):
        return settings
    return UNetSettings.model_validate(settings or {})


def settings_for_labels(settings: UNetSettings, labels: list[str]) -> UNetSettings:
    """The settings with the simulator's object classes: class 0 = background, class i =
    ``labels[i - 1]`` (the mask ids the simulator renders). ``num_classes`` and ``class_names``
    given in ``[task.settings]`` win; ``num_classes`` alone keeps the task's generic names
    unless it matches the labels."""
    given = settings.model_dump(include=set(settings.model_fields_set))
    names = ["background", *labels]
    if "class_names" in given:
        given.setdefault("num_classes", len(given["class_names"]))
    elif given.get("num_classes", len(names)) == len(names):
        given.update(num_classes=len(names), class_names=names)
    else:
        return settings
    return UNetSettings.model_validate(given)


def build_model(settings: UNetSettings) -> UNet:
    model = UNet(settings.in_channels, settings.num_classes, settings.depth, settings.width)
    model.freeze(settings.freeze)
    return model


def collate_examples(examples: list[Example], settings: UNetSettings) -> Batch:
    if not examples:
        raise ValueError("no examples to collate")
    images, masks = [], []
    for i, ex in enumerate(examples):
        where = (ex.scene or {}).get("id", i)
        if ex.mask is None:
            raise ValueError(f"example {where!r} has no mask; the unet task needs segmentation masks")
        image = ex.image
        if image.dim() != 3 or image.shape[0] != settings.in_channels:
            raise ValueError(f"example {where!r}: image must be ({settings.in_channels}, H, W); "
                             f"got {tuple(image.shape)}")
        if tuple(ex.mask.shape) != tuple(image.shape[1:]):
            raise ValueError(f"example {where!r}: mask {tuple(ex.mask.shape)} does not match image "
                             f"{tuple(image.shape[1:])}")
        if image.shape != examples[0].image.shape:
            raise ValueError(f"example {where!r}: image {tuple(image.shape)} differs from the first "
                             f"example's {tuple(examples[0].image.shape)}; all images of a batch need one size")
        _check_mask_ids(ex.mask, where, settings)
        # uint8 images are accepted and scaled like the float images renderers return.
        images.append(image.float() / 255.0 if image.dtype == torch.uint8 else image.float())
        masks.append(ex.mask)
    return Batch(torch.stack(images), torch.stack(masks).long())


def _check_mask_ids(mask: torch.Tensor, where: Any, settings: UNetSettings) -> None:
    """A one-line error for class ids the model has no output for (cross-entropy would fail
    deep inside training otherwise)."""
    n = settings.num_classes
    if mask.numel() == 0 or (int(mask.min()) >= 0 and int(mask.max()) < n):
        return
    bad = (mask < 0) | (mask >= n)
    if settings.ignore_index is not None:
        bad &= mask != settings.ignore_index
    if not bool(bad.any()):
        return
    ids = sorted({int(v) for v in mask[bad].unique()[:5]})
    void = "" if settings.ignore_index is None else f" or {settings.ignore_index} (ignore_index)"
    raise ValueError(f"example {where!r}: mask class id {ids[0] if len(ids) == 1 else ids} outside the valid "
                     f"range 0..{n - 1}{void} of num_classes = {n} ({', '.join(settings.names)}); the simulator's "
                     "labels hook or task.settings num_classes set the classes")


class UNetTask:
    """Hook implementations of the ``unet`` task (entry point ``autosim.tasks: unet``)."""

    @hookimpl
    def task_settings_model(self) -> type[BaseModel]:
        return UNetSettings

    @hookimpl
    def apply_labels(self, settings: Any, labels: list[str]) -> UNetSettings:
        return settings_for_labels(_settings(settings), labels)

    @hookimpl
    def create_model(self, settings: Any) -> torch.nn.Module:
        return build_model(_settings(settings))

    @hookimpl
    def collate(self, examples: list[Example], settings: Any) -> Batch:
        return collate_examples(examples, _settings(settings))

    @hookimpl
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, settings: Any) -> torch.Tensor:
        s = _settings(settings)
        weights = None
        if s.class_weights is not None:
            weights = torch.tensor(s.class_weights, dtype=outputs.dtype, device=outputs.device)
        return per_image_cross_entropy(outputs, targets, ignore_index=s.ignore_index, class_weights=weights)

    @hookimpl
    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor, settings: Any) -> dict[str, float]:
        s = _settings(settings)
        cm = confusion_matrix(outputs.argmax(1), targets, s.num_classes, ignore_index=s.ignore_index)
        return segmentation_metrics(cm, s.names, background=0)

    @hookimpl
    def metric_accumulator(self, settings: Any) -> ConfusionAccumulator:
        return ConfusionAccumulator(_settings(settings))

    @hookimpl
    def load_dataset(self, path: str, mask: str | None, settings: Any) -> list[Example]:
        s = _settings(settings)
        options = {"ignore_index": None if s.masks != "classes" else s.ignore_index,
                   "channels": s.in_channels, "intensity": s.intensity, "masks": s.masks}
        if mask is not None:
            return load_pair(path, mask, s.num_classes, **options)
        return load_folder(path, s.num_classes, **options)


class ConfusionAccumulator:
    """The ``unet`` task's metrics chunk by chunk: pixel counts add up, so the sum of the
    chunks' confusion matrices is the whole set's, and the metrics from it are exactly
    ``evaluate``'s on the concatenated outputs, with one C x C matrix kept in memory."""

    def __init__(self, settings: UNetSettings):
        self.settings = settings
        self.cm = torch.zeros(settings.num_classes, settings.num_classes, dtype=torch.long)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        s = self.settings
        self.cm += confusion_matrix(outputs.argmax(1), targets, s.num_classes, ignore_index=s.ignore_index).cpu()

    def compute(self) -> dict[str, float]:
        return segmentation_metrics(self.cm, self.settings.names, background=0)


unet_task = UNetTask()
