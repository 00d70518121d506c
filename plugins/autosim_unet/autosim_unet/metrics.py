"""Segmentation losses and metrics: per-image cross-entropy, confusion matrix, IoU."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def per_image_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int | None = None,
                            class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel cross-entropy averaged over each image's labelled pixels: shape (N,).

    Written without data-dependent Python branches so that torch.func can take its jvp and
    its Hessian-vector products. An image with no labelled pixel has loss 0.
    """
    ignore = -100 if ignore_index is None else ignore_index
    pixel = F.cross_entropy(logits, targets, weight=class_weights, ignore_index=ignore, reduction="none")
    valid = (targets != ignore).to(pixel.dtype)
    if class_weights is not None:
        # Weighted mean, as F.cross_entropy's own "mean" reduction defines it, per image.
        safe = targets.masked_fill(targets == ignore, 0)
        valid = valid * class_weights.to(pixel.dtype)[safe]
    flat_valid = valid.flatten(1)
    return pixel.flatten(1).sum(1) / flat_valid.sum(1).clamp_min(torch.finfo(pixel.dtype).tiny)


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int, *,
                     ignore_index: int | None = None) -> torch.Tensor:
    """Counts ``cm[t, p]`` of pixels with target class t predicted as p (int64, C x C)."""
    predictions = predictions.reshape(-1).long()
    targets = targets.reshape(-1).long()
    if ignore_index is not None:
        keep = targets != ignore_index
        predictions, targets = predictions[keep], targets[keep]
    bad = (targets < 0) | (targets >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"target class ids must lie in [0, {num_classes}); found {int(targets[bad][0])}")
    index = targets * num_classes + predictions
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(cm: torch.Tensor) -> list[float | None]:
    """IoU of each class from a confusion matrix; None for a class absent from both
    prediction and target (its IoU is 0/0)."""
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return [float(tp[c] / union[c]) if union[c] > 0 else None for c in range(cm.shape[0])]


def segmentation_metrics(cm: torch.Tensor, class_names: list[str], *, background: int | None = 0
                         ) -> dict[str, float]:
    """``metric``: mean IoU over the present non-background classes; ``iou_<name>`` for every
    present class; ``miou_all`` (background included); ``pixel_accuracy``.

    Classes absent from both prediction and target get no ``iou_`` key and do not enter the
    means. When no foreground class is present at all the prediction is exactly right on the
    foreground (nothing there, nothing predicted), so ``metric`` is 1.0.
    """
    ious = iou_per_class(cm)
    out: dict[str, float] = {}
    for name, iou in zip(class_names, ious, strict=True):
        if iou is not None:
            out[f"iou_{name}"] = iou
    foreground = [iou for c, iou in enumerate(ious) if c != background and iou is not None]
    present = [iou for iou in ious if iou is not None]
    total = int(cm.sum())
    out["metric"] = sum(foreground) / len(foreground) if foreground else 1.0
    out["miou_all"] = sum(present) / len(present) if present else math.nan
    out["pixel_accuracy"] = float(cm.diagonal().sum()) / total if total else math.nan
    return out
