"""The ``[task.settings]`` of the ``yolo`` and ``faster-rcnn`` tasks."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

SHAPE_CLASSES = ["circle", "square", "triangle"]
CLASSES_FROM_LABELS = "the simulator's labels hook"

# Darknet's anchors (pixels at a 416 x 416 input), smallest first; scaled to input_size.
TINY_ANCHORS = [(10.0, 14.0), (23.0, 27.0), (37.0, 58.0), (81.0, 82.0), (135.0, 169.0), (344.0, 319.0)]
SPP_ANCHORS = [(10.0, 13.0), (16.0, 30.0), (33.0, 23.0), (30.0, 61.0), (62.0, 45.0), (59.0, 119.0),
               (116.0, 90.0), (156.0, 198.0), (373.0, 326.0)]


class DetectionSettings(BaseModel):
    """What both detectors share: the classes, the input size, the data and the evaluation."""

    model_config = ConfigDict(extra="forbid")

    classes: list[str] = Field(default_factory=lambda: list(SHAPE_CLASSES),
                               description="object class names; class id = position in the list. Objects "
                                           "carry their class name in Example.objects[i]['category'] "
                                           "(default: the simulator's declared labels, else circle, square, "
                                           "triangle)")
    input_size: int = Field(160, ge=32, le=2048, description="images are letterboxed to input_size x input_size "
                                                             "(a multiple of 32)")
    weights: str | None = Field(None, description="a local file of pretrained weights: a torch state dict "
                                                  "(.pt/.pth, loaded with weights_only=True) or, for yolo, "
                                                  "Darknet .weights; nothing is downloaded")
    min_visible_fraction: float = Field(0.1, ge=0, le=1, description="objects less visible than this (their "
                                        "'visible_fraction') are left out of targets, as BOP does")
    conf_threshold: float = Field(0.001, ge=0, lt=1, description="detections below this score are dropped "
                                                                 "before NMS (low, as COCO mAP wants)")
    nms_iou: float = Field(0.6, gt=0, le=1, description="IoU above which NMS suppresses a detection of the "
                                                        "same class")
    max_detections: int = Field(100, ge=1, description="detections kept per image")
    # Where ``classes`` came from, for the error about an object of another category; the
    # task's ``apply_labels`` sets it when the simulator's labels replace the default.
    _classes_from_labels: str | None = PrivateAttr(None)

    @property
    def classes_source(self) -> str:
        """Where the class list came from, in words: the config, the simulator or the default."""
        if self._classes_from_labels is not None:
            return self._classes_from_labels
        if "classes" in self.model_fields_set:
            return "[task.settings] classes"
        return "the default classes; set [task.settings] classes"

    @model_validator(mode="after")
    def _check_shared(self) -> DetectionSettings:
        if self.input_size % 32:
            raise ValueError(f"input_size = {self.input_size} must be a multiple of 32")
        if not self.classes:
            raise ValueError("classes must name at least one class")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be distinct")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class YoloSettings(DetectionSettings):
    """``[task.settings]`` of the ``yolo`` task."""

    variant: Literal["tiny", "spp"] = Field("tiny", description="YOLOv3-tiny (2 scales) or YOLOv3-spp (3 scales)")
    width: float = Field(0.5, gt=0, le=2, description="channel multiplier of every layer (1 = Darknet's widths)")
    norm: Literal["group", "batch"] = Field(
        "group", description="GroupNorm, or BatchNorm (trained in train mode; the hypergradient runs the model in "
                             "eval mode, where torch.func can transform it)")
    anchors: list[tuple[float, float]] | None = Field(
        None, description="anchor (w, h) pairs in pixels at a 416 input, smallest first: 6 for tiny, 9 for spp "
                          "(default: Darknet's); scaled by input_size / 416")
    freeze: int = Field(0, ge=0, description="the first N layers (Darknet's layer numbering) are frozen: excluded "
                                             "from training, HVPs and psi's gradient")
    # Measured training YOLO-tiny (width 0.25, 96 px) on the shapes `target` preset: with YOLOv5's
    # gains (0.05, 1, 0.5) objectness, whose positives are ~1 % of its mean, learned slowest; these
    # reached twice the val mAP@0.5 after about 1,200 steps (0.13 against 0.07).
    box_gain: float = Field(0.5, ge=0, description="weight of the box (GIoU) term, a mean over the image's positives")
    obj_gain: float = Field(8.0, ge=0, description="weight of the objectness term, a mean over all predictions")
    cls_gain: float = Field(1.0, ge=0, description="weight of the class term, a mean over the image's positives")
    ignore_iou: float = Field(0.7, gt=0, le=1, description="predictions overlapping a ground-truth box by more "
                                                           "than this are not penalised as background")
    # Measured by recipe_curves.py (the plugin's README has the table): 'multi' reached the val
    # mAP@0.5 of 900 steps of 'best' in about 450, and 0.36 against 0.26 at 900.
    assign: Literal["best", "multi", "multi-cells"] = Field(
        "multi", description="target assignment: 'best' = the one anchor (of all heads) whose shape fits the box "
                            "best, at the cell of its centre (YOLOv3); 'multi' = also every anchor whose width and "
                            "height are within anchor_ratio of the box's; 'multi-cells' = 'multi' at the centre's "
                            "cell and at the two neighbouring cells nearest the centre (YOLOv5; wants xy_range = 2)")
    anchor_ratio: float = Field(4.0, gt=1, description="'multi' and 'multi-cells': the largest ratio (either way) "
                                                       "of box to anchor width or height (YOLOv5's anchor_t)")
    xy_range: float = Field(1.0, ge=1, le=3, description="a box centre decodes to (xy_range * sigmoid(t) - "
                            "(xy_range - 1) / 2 + cell) * stride: 1 keeps it in its cell (YOLOv3), 2 lets it reach "
                            "half a cell past either edge, as 'multi-cells' assignment needs (YOLOv5)")
    obj_pos_weight: float = Field(1.0, gt=0, description="weight of the positives in the objectness BCE "
                                                         "(pos_weight), against the many background predictions")

    @model_validator(mode="after")
    def _check_yolo(self) -> YoloSettings:
        wanted = 6 if self.variant == "tiny" else 9
        if self.anchors is not None and len(self.anchors) != wanted:
            raise ValueError(f"anchors: yolo {self.variant} needs {wanted} (w, h) pairs, got {len(self.anchors)}")
        if self.anchors is not None and any(w <= 0 or h <= 0 for w, h in self.anchors):
            raise ValueError("anchors must be positive")
        return self

    def anchors_px(self) -> list[tuple[float, float]]:
        """The anchors in pixels of this input size."""
        base = self.anchors or (TINY_ANCHORS if self.variant == "tiny" else SPP_ANCHORS)
        factor = self.input_size / 416.0
        return [(w * factor, h * factor) for w, h in base]


class FasterRCNNSettings(DetectionSettings):
    """``[task.settings]`` of the ``faster-rcnn`` task."""

    input_size: int = Field(320, ge=32, le=2048, description="images are letterboxed to input_size x input_size "
                                                             "(a multiple of 32)")
    trainable_backbone_layers: int = Field(3, ge=0, le=6, description="backbone stages trained (the rest frozen)")
    proposals: int = Field(100, ge=1, description="RPN proposals kept per image after NMS (fixed, padded)")


def coerce(settings: Any, model: type[BaseModel]) -> Any:
    """The hooks also accept a plain dict (or nothing), e.g. when called outside a run."""
    if isinstance(settings, model):
        return settings
    return model.model_validate(settings or {})
