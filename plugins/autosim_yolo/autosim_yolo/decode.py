"""Raw YOLO predictions -> boxes, scores and detections.

The box decoding here is the one the loss uses (``loss.py`` imports ``decode_xyxy``), as
YOLOv3 defines it: centre ``((sigmoid(tx) + gx) * stride, (sigmoid(ty) + gy) * stride)``, size
``(anchor_w * exp(tw), anchor_h * exp(th))``, all in pixels of the network input; with the
``xy_range`` setting r the centre is ``(r * sigmoid(t) - (r - 1) / 2 + g) * stride`` (YOLOv5's r = 2).
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.ops import batched_nms

from .model import prediction_count, prediction_grid
from .settings import YoloSettings, coerce

# exp(tw) is capped at e^6 (about 400 anchor widths): no box that size fits any input, and an
# untrained head must not overflow to inf, whose gradients would be NaN.
MAX_LOG_SCALE = 6.0


def check_outputs(outputs: torch.Tensor, settings: YoloSettings) -> None:
    """Raise a clear error when ``outputs`` is not (B, N, 5 + C) for these settings."""
    n, c = prediction_count(settings), settings.num_classes
    if outputs.dim() != 3 or outputs.shape[1:] != (n, 5 + c):
        raise ValueError(f"yolo {settings.variant} outputs at input_size {settings.input_size} with {c} classes "
                         f"must have shape (B, {n}, {5 + c}), got {tuple(outputs.shape)}")


def decode_xyxy(raw_box: torch.Tensor, grid: dict[str, torch.Tensor], xy_range: float = 1.0) -> torch.Tensor:
    """(..., N, 4) raw tx, ty, tw, th -> (..., N, 4) boxes x0, y0, x1, y1 in input pixels.

    ``xy_range`` (the setting): the centre's reach in cells, centred on the cell (1: YOLOv3's)."""
    stride = grid["stride"]
    shift = (xy_range - 1) / 2
    cx = (xy_range * torch.sigmoid(raw_box[..., 0]) - shift + grid["gx"]) * stride
    cy = (xy_range * torch.sigmoid(raw_box[..., 1]) - shift + grid["gy"]) * stride
    half_w = 0.5 * grid["anchor_w"] * torch.exp(raw_box[..., 2].clamp(max=MAX_LOG_SCALE))
    half_h = 0.5 * grid["anchor_h"] * torch.exp(raw_box[..., 3].clamp(max=MAX_LOG_SCALE))
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


def decode_boxes(outputs: torch.Tensor, settings: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw outputs (B, N, 5 + C) -> boxes (B, N, 4) x0, y0, x1, y1 in input pixels, objectness
    probabilities (B, N) and class probabilities (B, N, C) (independent sigmoids, as YOLOv3)."""
    settings = coerce(settings, YoloSettings)
    check_outputs(outputs, settings)
    grid = prediction_grid(settings, outputs.device, outputs.dtype)
    boxes = decode_xyxy(outputs[..., :4], grid, settings.xy_range)
    return boxes, torch.sigmoid(outputs[..., 4]), torch.sigmoid(outputs[..., 5:])


@torch.no_grad()
def yolo_detections(outputs: torch.Tensor, settings: Any) -> list[dict[str, torch.Tensor]]:
    """Per image ``{"boxes": (n, 4), "scores": (n,), "labels": (n,) int64}``, best first.

    Every (prediction, class) pair is a candidate with score objectness x class probability
    (multi-label, as YOLOv3); those above ``conf_threshold`` go through NMS per class at
    ``nms_iou`` and the best ``max_detections`` are kept. Boxes are clipped to the input square (those
    left empty are dropped).
    """
    settings = coerce(settings, YoloSettings)
    boxes, objectness, classes = decode_boxes(outputs.detach(), settings)
    boxes = boxes.clamp(0, settings.input_size)
    num_classes = settings.num_classes
    detections = []
    for image_boxes, image_obj, image_cls in zip(boxes, objectness, classes, strict=True):
        scores = (image_obj[:, None] * image_cls).reshape(-1)
        # A box entirely outside the input clips to nothing: not a detection.
        visible = (image_boxes[:, 2] > image_boxes[:, 0]) & (image_boxes[:, 3] > image_boxes[:, 1])
        candidates = (scores > settings.conf_threshold) & visible.repeat_interleave(num_classes)
        keep = torch.nonzero(candidates).squeeze(1)
        candidate_boxes = image_boxes[keep // num_classes]
        labels = keep % num_classes
        scores = scores[keep]
        kept = batched_nms(candidate_boxes.float(), scores.float(), labels, settings.nms_iou)
        kept = kept[: settings.max_detections]
        detections.append({"boxes": candidate_boxes[kept], "scores": scores[kept], "labels": labels[kept]})
    return detections
