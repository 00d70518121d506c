"""The YOLOv3 loss, one value per image, written for torch.func.

Assignment (from the targets only, so nothing here depends on theta), by the ``assign``
setting: ``best`` (YOLOv3's) gives each ground-truth box the anchor, among all of the variant's
anchors, whose shape (w, h) matches it best by IoU, at the cell of its centre in that anchor's
head; ``multi`` also every anchor whose width and height are both within ``anchor_ratio`` of
the box's (YOLOv5's rule); ``multi-cells`` each of those at the centre's cell and at the two
neighbouring cells whose edges the centre is nearer (YOLOv5's), which a centre decoded with
``xy_range = 2`` can reach. The result is dense per-prediction targets (positive weight, box,
class one-hot) built with scatters; when two boxes land on the same prediction the later row of
the targets wins.

Terms per image, with P its positives and N all its predictions:

* box: GIoU loss between the decoded predicted box and its ground truth, mean over P;
* objectness: BCE with logits over all N predictions (positives weighted by ``obj_pos_weight``),
  target 1 at P and 0 elsewhere, except
  predictions (not in P) whose detached decoded box overlaps a ground-truth box by IoU above
  ``ignore_iou``, which count 0; the sum is divided by N (fixed for an input size, so the
  term's scale does not jump when predictions enter or leave the ignored set);
* class: BCE with logits of the C independent class logits against the one-hot class (YOLOv3's
  multi-label logistic), mean over P and the C classes.

loss = box_gain * box + obj_gain * obj + cls_gain * cls; an image without objects has only
the objectness term. Everything works on fixed shapes without ``.item()`` or boolean-mask
indexing of theta-dependent tensors, so ``torch.func`` (grad, jvp, functional_call) and
double backward go through it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from .decode import check_outputs, decode_xyxy
from .model import head_layout, prediction_count, prediction_grid
from .settings import YoloSettings, coerce

# A dummy ground-truth box for predictions that are not positives: their box term is weighted
# by 0, and a box of positive area keeps the GIoU (and its gradients) finite there.
_NEUTRAL_BOX = (0.0, 0.0, 1.0, 1.0)


def giou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Elementwise 1 - GIoU of (..., 4) x0, y0, x1, y1 boxes: the values of
    ``torchvision.ops.generalized_box_iou_loss``, whose intersection assigns through a boolean
    mask (a data-dependent shape and, on a GPU, a host sync); here a clamp at 0 does it."""
    x0, y0, x1, y1 = boxes1.unbind(-1)
    gx0, gy0, gx1, gy1 = boxes2.unbind(-1)
    inter = (torch.minimum(x1, gx1) - torch.maximum(x0, gx0)).clamp(min=0) * \
        (torch.minimum(y1, gy1) - torch.maximum(y0, gy0)).clamp(min=0)
    union = (x1 - x0) * (y1 - y0) + (gx1 - gx0) * (gy1 - gy0) - inter
    iou = inter / (union + eps)
    enclosing = (torch.maximum(x1, gx1) - torch.minimum(x0, gx0)) * (torch.maximum(y1, gy1) - torch.minimum(y0, gy0))
    return 1 - iou + (enclosing - union) / (enclosing + eps)


def _anchor_tables(settings: YoloSettings, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Per anchor k of the variant: its (w, h), and its head's first prediction index, position
    in the head's mask, stride and side (cells per row)."""
    anchors = settings.anchors_px()
    table: dict[str, list[Any]] = {"offset": [0] * len(anchors), "slot": [0] * len(anchors),
                                   "stride": [0] * len(anchors), "side": [0] * len(anchors)}
    offset = 0
    for stride, mask in head_layout(settings.variant):
        side = settings.input_size // stride
        for slot, k in enumerate(mask):
            table["offset"][k], table["slot"][k] = offset, slot
            table["stride"][k], table["side"][k] = stride, side
        offset += len(mask) * side * side
    out = {k: torch.tensor(v, device=device) for k, v in table.items()}
    out["wh"] = torch.tensor(anchors, device=device, dtype=dtype)
    return out


def _candidates(boxes: torch.Tensor, settings: YoloSettings, tables: dict[str, torch.Tensor],
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per target row (B, M) the J predictions the ``assign`` rule gives it: their indices
    (B, M, J) and whether each is taken (B, M, J) bool (before rows are checked for padding)."""
    k_all = tables["wh"].shape[0]
    w = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    h = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    aw, ah = tables["wh"][:, 0], tables["wh"][:, 1]
    inter = torch.minimum(w[..., None], aw) * torch.minimum(h[..., None], ah)
    shape_iou = inter / (w[..., None] * h[..., None] + aw * ah - inter)
    best = shape_iou.argmax(-1)  # (B, M)
    if settings.assign == "best":
        anchor, usable = best[..., None], torch.ones_like(best[..., None], dtype=torch.bool)
    else:
        # YOLOv5's rule: every anchor within anchor_ratio of the box in width and height, and
        # the best-fitting one always, so that no box is left without a prediction.
        anchor = torch.arange(k_all, device=boxes.device).expand(*best.shape, k_all)
        ratio = torch.maximum(torch.maximum(w[..., None] / aw, aw / w[..., None].clamp(min=1e-9)),
                              torch.maximum(h[..., None] / ah, ah / h[..., None].clamp(min=1e-9)))
        usable = (ratio < settings.anchor_ratio) | (anchor == best[..., None])

    stride = tables["stride"][anchor].to(dtype)
    side = tables["side"][anchor]
    cx = ((boxes[..., 0] + boxes[..., 2]) / 2)[..., None] / stride
    cy = ((boxes[..., 1] + boxes[..., 3]) / 2)[..., None] / stride
    gx = torch.minimum(torch.floor(cx).long().clamp(min=0), side - 1)
    gy = torch.minimum(torch.floor(cy).long().clamp(min=0), side - 1)
    cells = [(gx, gy, usable)]
    if settings.assign == "multi-cells":
        # The neighbour across the nearer vertical edge and the one across the nearer
        # horizontal edge (YOLOv5's g = 0.5): centres within half a cell of them.
        nx = torch.where(cx - gx < 0.5, gx - 1, gx + 1)
        ny = torch.where(cy - gy < 0.5, gy - 1, gy + 1)
        cells += [(nx, gy, usable & (nx >= 0) & (nx < side)), (gx, ny, usable & (ny >= 0) & (ny < side))]
    base = tables["offset"][anchor] + tables["slot"][anchor] * side * side
    # A neighbour outside the grid gets an index here too, but is not taken (the caller drops it).
    index = torch.cat([base + y * side + x for x, y, _ in cells], -1)
    return index, torch.cat([ok for _, _, ok in cells], -1)


def assign_targets(targets: torch.Tensor, settings: Any, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Dense per-prediction targets from the padded targets (B, M, 5), by the ``assign`` rule.

    Returns ``positive`` (B, N) 1 at assigned predictions, ``box`` (B, N, 4) their ground-truth
    box (a neutral box elsewhere), ``cls`` (B, N, C) the one-hot class and ``index`` the
    predictions each target row went to (N for padding, for candidates the rule does not take
    and for those a later row took): (B, M) for ``assign = "best"``, else (B, M, J) with the J
    candidates of a row (anchor by anchor; for "multi-cells" the centre's cells of all anchors,
    then the horizontal neighbours, then the vertical ones).
    """
    settings = coerce(settings, YoloSettings)
    if targets.dim() != 3 or targets.shape[-1] != 5:
        raise ValueError(f"expected padded targets (B, M, 5), got shape {tuple(targets.shape)}")
    dtype = dtype or (targets.dtype if targets.is_floating_point() else torch.get_default_dtype())
    targets = targets.detach().to(dtype)
    device = targets.device
    b, m, _ = targets.shape
    n, c = prediction_count(settings), settings.num_classes
    boxes, labels = targets[..., :4], targets[..., 4]
    valid = labels >= 0
    if bool((valid & (labels >= c)).any()):
        raise ValueError(f"targets hold class ids >= the {c} classes of the task")

    tables = _anchor_tables(settings, device, dtype)
    index, taken = _candidates(boxes, settings, tables, dtype)
    j = index.shape[-1]
    index = torch.where(valid[..., None] & taken, index, n).reshape(b, m * j)

    # Last row wins: a row keeps a prediction only if no later row of the image took it.
    rows = torch.arange(m, device=device).repeat_interleave(j).expand(b, m * j)
    winner = torch.full((b, n + 1), -1, device=device, dtype=torch.long).scatter_reduce(
        1, index, rows, reduce="amax")
    index = torch.where((index < n) & (winner.gather(1, index) == rows), index, n)

    # One spare slot (N) takes the candidates not taken and is cut off afterwards.
    flat_boxes = boxes.repeat_interleave(j, dim=1)
    one_hot = (labels.long()[..., None] == torch.arange(c, device=device)).to(dtype).repeat_interleave(j, dim=1)
    used = (index < n).to(dtype)
    positive = torch.zeros(b, n + 1, device=device, dtype=dtype).scatter(1, index, used)[:, :n]
    box = torch.tensor(_NEUTRAL_BOX, device=device, dtype=dtype).repeat(b, n + 1, 1)
    box = box.scatter(1, index[..., None].expand(b, m * j, 4), flat_boxes)[:, :n]
    cls = torch.zeros(b, n + 1, c, device=device, dtype=dtype).scatter(1, index[..., None].expand(b, m * j, c),
                                                                       one_hot)
    index = index.reshape(b, m) if j == 1 else index.reshape(b, m, j)
    return {"positive": positive, "box": box, "cls": cls[:, :n], "index": index}


def ignore_mask(pred_boxes: torch.Tensor, targets: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, N) bool: predictions whose box overlaps some ground-truth box by IoU > ``threshold``.

    Computed on detached boxes: which predictions are ignored is a piecewise-constant choice,
    not something to differentiate.
    """
    pred_boxes = pred_boxes.detach()
    targets = targets.detach().to(pred_boxes.dtype)
    valid = targets[..., 4] >= 0
    overlaps = torch.stack([box_iou(p, t[:, :4]) for p, t in zip(pred_boxes, targets, strict=True)])
    overlaps = torch.where(valid[:, None, :], overlaps, torch.zeros_like(overlaps))
    return overlaps.amax(-1) > threshold


def yolo_losses(outputs: torch.Tensor, targets: torch.Tensor, settings: Any) -> torch.Tensor:
    """Per-image YOLOv3 losses (B,) of raw outputs (B, N, 5 + C) against padded targets (B, M, 5)."""
    settings = coerce(settings, YoloSettings)
    check_outputs(outputs, settings)
    if targets.shape[0] != outputs.shape[0]:
        raise ValueError(f"{outputs.shape[0]} outputs but {targets.shape[0]} target rows")
    n = outputs.shape[1]
    targets = targets.to(device=outputs.device)
    assigned = assign_targets(targets, settings, dtype=outputs.dtype)
    positive = assigned["positive"]
    count = positive.sum(1).clamp(min=1)

    grid = prediction_grid(settings, outputs.device, outputs.dtype)
    pred_boxes = decode_xyxy(outputs[..., :4], grid, settings.xy_range)

    box = (giou_loss(pred_boxes, assigned["box"]) * positive).sum(1) / count

    ignored = ignore_mask(pred_boxes, targets, settings.ignore_iou) & (positive == 0)
    obj_weight = 1 - ignored.to(outputs.dtype)
    pos_weight = None if settings.obj_pos_weight == 1 else outputs.new_tensor(settings.obj_pos_weight)
    obj_bce = F.binary_cross_entropy_with_logits(outputs[..., 4], positive, reduction="none", pos_weight=pos_weight)
    obj = (obj_bce * obj_weight).sum(1) / n

    cls_bce = F.binary_cross_entropy_with_logits(outputs[..., 5:], assigned["cls"], reduction="none").mean(-1)
    cls = (cls_bce * positive).sum(1) / count

    return settings.box_gain * box + settings.obj_gain * obj + settings.cls_gain * cls
