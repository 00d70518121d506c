"""COCO box mAP of a detector's outputs against the padded target tensor.

All numbers come from one run of the COCO evaluator (torchmetrics' ``MeanAveragePrecision``
with the ``faster_coco_eval`` backend); nothing here re-implements AP. The per-class AP@0.5
values are read from the evaluator's own precision array (its extended summary), the same
array COCO's summary averages into ``map_50``, so ``map_50`` is exactly their mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.detection import MeanAveragePrecision

from .targets import unpack_targets

# COCO's default IoU thresholds are 0.50, 0.55, ..., 0.95: AP@0.5 is index 0 of the T axis.
_IOU_50 = 0
# Area range "all" (COCO's A axis: all, small, medium, large).
_AREA_ALL = 0


def _clean(detections: Sequence[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    out = []
    for i, det in enumerate(detections):
        missing = {"boxes", "scores", "labels"} - set(det)
        if missing:
            raise ValueError(f"detections[{i}] lacks {sorted(missing)}; expected boxes (n, 4) xyxy, scores (n,), "
                             "labels (n,)")
        boxes = det["boxes"].detach().to("cpu", torch.float32).reshape(-1, 4)
        scores = det["scores"].detach().to("cpu", torch.float32).reshape(-1)
        labels = det["labels"].detach().to("cpu", torch.int64).reshape(-1)
        if not (boxes.shape[0] == scores.shape[0] == labels.shape[0]):
            raise ValueError(f"detections[{i}]: {boxes.shape[0]} boxes, {scores.shape[0]} scores and "
                             f"{labels.shape[0]} labels; they must match")
        out.append({"boxes": boxes, "scores": scores, "labels": labels})
    return out


def detection_metrics(detections: list[dict[str, torch.Tensor]], targets: torch.Tensor,
                      classes: list[str]) -> dict[str, float]:
    """COCO box metrics of ``detections`` (per image ``{"boxes": (n, 4) xyxy, "scores": (n,),
    "labels": (n,)}``) against ``targets``, the padded (B, M, 5) tensor of ``targets.py``.

    Returns ``"metric"`` (= ``"map_50"``, the number searchers maximise), ``"map_50"``,
    ``"map"`` (AP averaged over IoU 0.50:0.95) and ``"map_75"``, all averaged over the classes
    that have ground truth, and ``f"ap50_{name}"`` for each class of ``classes`` that has at
    least one ground-truth box. A class without ground truth has no AP (COCO leaves it out of
    the mean), so it gets no key rather than a made-up 0 or 1; its detections lower no other
    class's AP, since COCO matches within a class. Up to 100 detections per image are scored (COCO's
    ``maxDets``).

    Raises ``ValueError`` when ``targets`` hold no object at all: COCO then reports -1
    ("undefined"), and neither -1 nor a substitute 0.0 is a score a searcher should maximise.
    An evaluation set without a single box is a setup error (wrong folder, ``classes`` or a
    ``min_visible_fraction`` that filters every object out), better stopped at once than
    optimised against for a whole run.
    """
    if targets.dim() != 3 or targets.shape[-1] != 5:
        raise ValueError(f"targets must be the padded tensor (B, M, 5), got shape {tuple(targets.shape)}")
    if len(detections) != targets.shape[0]:
        raise ValueError(f"{len(detections)} detection dicts for {targets.shape[0]} images; need one per image")
    truth = unpack_targets(targets.detach().cpu())
    gt_labels = torch.cat([t["labels"] for t in truth])
    if gt_labels.numel() == 0:
        raise ValueError(f"no ground-truth boxes in the {targets.shape[0]} images, so mAP is undefined; check the "
                         "evaluation data, [task.settings] classes and min_visible_fraction")
    if int(gt_labels.max()) >= len(classes):
        raise ValueError(f"ground-truth class id {int(gt_labels.max())} but only {len(classes)} classes {classes}")

    evaluator = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval",
                                     extended_summary=True)
    evaluator.update(_clean(detections), truth)
    result = evaluator.compute()

    # With ground truth present every value is defined; the clamp only guards against a
    # backend that reports -1 when there are no detections at all (pycocotools does), where
    # the true AP is 0: every ground-truth box was missed.
    out = {key: max(float(result[key]), 0.0) for key in ("map_50", "map", "map_75")}
    out["metric"] = out["map_50"]

    # precision: (T iou thresholds, R recall thresholds, K classes, A areas, M max-dets); K runs
    # over the sorted ids of every label seen (ground truth or detection), as "classes" lists.
    precision = result["precision"][_IOU_50, :, :, _AREA_ALL, -1]
    # reshape: torchmetrics squeezes a single class id to a 0-d tensor.
    seen = result["classes"].reshape(-1).tolist()
    if precision.shape[1] != len(seen):
        raise RuntimeError(f"the evaluator's precision array has {precision.shape[1]} classes but it reports "
                           f"{len(seen)} class ids; torchmetrics' extended summary changed shape")
    for column, class_id in enumerate(seen):
        if not 0 <= class_id < len(classes):
            continue
        curve = precision[:, column]
        # -1 marks "no ground truth for this class" (COCO skips those in its mean as well).
        curve = curve[curve > -1]
        if curve.numel():
            out[f"ap50_{classes[class_id]}"] = float(curve.mean())
    return out
