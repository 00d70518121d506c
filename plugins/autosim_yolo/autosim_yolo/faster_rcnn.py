"""Faster R-CNN (torchvision's MobileNetV3-Large 320 FPN) in the form autosim's core can transform.

torchvision's ``FasterRCNN`` computes its losses inside ``forward`` from targets passed to it,
samples anchors and proposals at random, and pools with ``torchvision.ops.roi_align``, which has
no double backward and gives a zero tangent under ``torch.func.jvp``. The core needs instead
``model(images)`` -> one tensor, per-image losses computed from that tensor and the targets
alone, exact Hessian-vector products by double backward and exact forward-mode derivatives.

So the network keeps torchvision's layers (and their state-dict names, so torchvision
checkpoints load) but runs them in a different frame:

* ``forward`` returns one (B, D) tensor holding every anchor's RPN outputs and, for ``P``
  proposals per image (padded to exactly ``P``), the proposal boxes and the box head's outputs.
* Proposals are chosen on detached values (top-k, NMS), as torchvision does; the RoI features are
  pooled by a pure-torch RoIAlign whose sampling weights come from the detached boxes, so the
  pooling is a linear map of the features that every autograd mode differentiates exactly.
* The loss replaces torchvision's random balanced sampling by its expectation: every anchor (and
  proposal) is weighted by its probability of being drawn. The hypergradient evaluates the loss
  several times at the same parameters (gradients, HVPs, directional derivatives) and needs the
  same function each time; random sampling would give a different loss at each call, while the
  expectation has the same mean value and gradient as torchvision's loss without the noise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection.backbone_utils import _mobilenet_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import AnchorGenerator, RPNHead
from torchvision.ops import FrozenBatchNorm2d, batched_nms, remove_small_boxes

from .settings import FasterRCNNSettings, coerce

# torchvision's fasterrcnn_mobilenet_v3_large_320_fpn: five anchor sizes and three aspect ratios
# at every location of each of its three feature maps, for images whose short side is 320.
REFERENCE_SIZE = 320
ANCHOR_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
ANCHORS_PER_LOCATION = len(ANCHOR_SIZES) * len(ASPECT_RATIOS)

# torchvision's RPN and RoI-head defaults.
RPN_FG_IOU, RPN_BG_IOU = 0.7, 0.3
RPN_BATCH, RPN_POSITIVE_FRACTION = 256, 0.5
RPN_NMS_IOU = 0.7
RPN_PRE_NMS_TOP_N = 1000
RPN_MIN_SIZE = 1e-3
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_FG_IOU = 0.5
ROI_BATCH, ROI_POSITIVE_FRACTION = 512, 0.25
ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
ROI_OUTPUT_SIZE = 7
ROI_SAMPLING_RATIO = 2
ROI_FEATURE_MAPS = 2  # MultiScaleRoIAlign(["0", "1", "2", "3"]) finds only "0" and "1" in this backbone
REPRESENTATION_SIZE = 1024
DETECTION_MIN_SIZE = 1e-2
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
SMOOTH_L1_BETA = 1.0 / 9
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREDICTOR = "roi_heads.box_predictor."


# ------------------------------------------------------------------------------- anchors ---
def feature_sizes(input_size: int) -> tuple[int, int, int]:
    """Side lengths of the backbone's three feature maps ("0", "1", "pool") for an input side.

    Both FPN levels of the MobileNetV3 backbone have stride 32; the extra level is a stride-2
    max pool of the last one.
    """
    side = input_size // 32
    return side, side, (side - 1) // 2 + 1


@lru_cache(maxsize=16)
def _anchors(input_size: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    factor = input_size / REFERENCE_SIZE
    sizes = tuple(s * factor for s in ANCHOR_SIZES)
    generator = AnchorGenerator((sizes,) * 3, (ASPECT_RATIOS,) * 3)
    boxes, counts = [], []
    for g in feature_sizes(input_size):
        # torchvision's stride is the integer quotient, and its anchors sit on cell corners.
        stride = input_size // g
        cell = generator.generate_anchors(sizes, ASPECT_RATIOS)
        shifts = torch.arange(g, dtype=torch.float32) * stride
        sy, sx = torch.meshgrid(shifts, shifts, indexing="ij")
        shift = torch.stack([sx.reshape(-1), sy.reshape(-1)] * 2, dim=1)
        boxes.append((shift[:, None, :] + cell[None]).reshape(-1, 4))
        counts.append(boxes[-1].shape[0])
    return torch.cat(boxes).double(), tuple(counts)


def anchor_boxes(input_size: int) -> torch.Tensor:
    """All anchors (A, 4) ``[x0, y0, x1, y1]`` in input pixels, in the order of the RPN outputs:
    feature map, then location (row-major), then anchor shape."""
    return _anchors(input_size)[0].clone()


def anchors_per_level(input_size: int) -> tuple[int, ...]:
    return _anchors(input_size)[1]


def num_anchors(input_size: int) -> int:
    return sum(anchors_per_level(input_size))


# ----------------------------------------------------------------------- output layout ---
class FasterRCNNOutputs(NamedTuple):
    """Views into the model's output tensor (B, D)."""

    rpn_logits: torch.Tensor  # (B, A) objectness logit of every anchor
    rpn_deltas: torch.Tensor  # (B, A, 4) box deltas (dx, dy, dw, dh) of every anchor
    proposals: torch.Tensor  # (B, P, 4) proposal boxes in input pixels, constants
    valid: torch.Tensor  # (B, P) 1 for a proposal, 0 for padding
    class_logits: torch.Tensor  # (B, P, C + 1) class 0 = background
    box_regression: torch.Tensor  # (B, P, C + 1, 4) deltas of each class's box


def output_width(settings: Any) -> int:
    """D: the length of one image's row in the model's output."""
    s = coerce(settings, FasterRCNNSettings)
    k = s.num_classes + 1
    return 5 * num_anchors(s.input_size) + s.proposals * (5 + 5 * k)


def split_outputs(outputs: torch.Tensor, settings: Any) -> FasterRCNNOutputs:
    """The named parts of the model's output (B, D).

    Layout of each row: ``A`` anchors x ``[logit, dx, dy, dw, dh]``, then ``P`` proposals x
    ``[x0, y0, x1, y1, valid, class logits (C + 1), box deltas (C + 1) x 4]``.
    """
    s = coerce(settings, FasterRCNNSettings)
    if outputs.dim() != 2 or outputs.shape[1] != output_width(s):
        raise ValueError(f"faster-rcnn outputs must have shape (B, {output_width(s)}) for input_size="
                         f"{s.input_size}, proposals={s.proposals} and {s.num_classes} classes; got "
                         f"{tuple(outputs.shape)}")
    b, a, p, k = outputs.shape[0], num_anchors(s.input_size), s.proposals, s.num_classes + 1
    rpn = outputs[:, : 5 * a].reshape(b, a, 5)
    per = outputs[:, 5 * a:].reshape(b, p, 5 + 5 * k)
    return FasterRCNNOutputs(rpn[..., 0], rpn[..., 1:], per[..., :4], per[..., 4], per[..., 5:5 + k],
                             per[..., 5 + k:].reshape(b, p, k, 4))


# ---------------------------------------------------------------------------- box maths ---
def _decode(deltas: torch.Tensor, ref: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    """torchvision's BoxCoder.decode_single, broadcast over leading dimensions."""
    wx, wy, ww, wh = weights
    widths, heights = ref[..., 2] - ref[..., 0], ref[..., 3] - ref[..., 1]
    cx, cy = ref[..., 0] + 0.5 * widths, ref[..., 1] + 0.5 * heights
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=BBOX_XFORM_CLIP)
    dh = (deltas[..., 3] / wh).clamp(max=BBOX_XFORM_CLIP)
    pcx, pcy = dx * widths + cx, dy * heights + cy
    pw, ph = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=-1)


def _encode(gt: torch.Tensor, ref: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    """torchvision's BoxCoder.encode_single; degenerate boxes give finite nonsense (callers
    weigh those rows 0, and 0 * inf would be nan)."""
    wx, wy, ww, wh = weights
    tiny = torch.finfo(ref.dtype).tiny
    rw, rh = ref[..., 2] - ref[..., 0], ref[..., 3] - ref[..., 1]
    rcx, rcy = ref[..., 0] + 0.5 * rw, ref[..., 1] + 0.5 * rh
    gw, gh = gt[..., 2] - gt[..., 0], gt[..., 3] - gt[..., 1]
    gcx, gcy = gt[..., 0] + 0.5 * gw, gt[..., 1] + 0.5 * gh
    rw, rh, gw, gh = rw.clamp(min=tiny), rh.clamp(min=tiny), gw.clamp(min=tiny), gh.clamp(min=tiny)
    return torch.stack([wx * (gcx - rcx) / rw, wy * (gcy - rcy) / rh,
                        ww * torch.log(gw / rw), wh * torch.log(gh / rh)], dim=-1)


def _clip(boxes: torch.Tensor, size: int) -> torch.Tensor:
    return boxes.clamp(min=0, max=size)


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU (..., N, M) of boxes (..., N, 4) and (..., M, 4); torchvision's formula, so that ties
    in the low-quality matching come out as in torchvision."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))


# ----------------------------------------------------------------------------- RoIAlign ---
def _axis_weights(start: torch.Tensor, length: torch.Tensor, pooled: int, grid: int, size: int) -> torch.Tensor:
    """(..., pooled, size): the mean over a bin's ``grid`` sampling points of their linear
    interpolation weights along one axis, with torchvision's border rules."""
    bin_size = length / pooled
    steps = torch.arange(pooled, dtype=start.dtype, device=start.device)
    offsets = (torch.arange(grid, dtype=start.dtype, device=start.device) + 0.5)
    points = (start[..., None, None] + steps[:, None] * bin_size[..., None, None]
              + offsets * bin_size[..., None, None] / grid)  # (..., pooled, grid)
    inside = (points >= -1.0) & (points <= size)
    points = points.clamp(min=0)
    low = points.floor().long()
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(points), points - low.to(points.dtype))
    cells = torch.arange(size, device=start.device)
    weights = ((cells == low[..., None]).to(points.dtype) * (1 - frac)[..., None]
               + (cells == high[..., None]).to(points.dtype) * frac[..., None])
    return (weights * inside[..., None].to(points.dtype)).sum(-2) / grid


def _pool(features: torch.Tensor, boxes: torch.Tensor, output_size: tuple[int, int], spatial_scale: float,
          sampling_ratio: int, aligned: bool, mask: torch.Tensor | None) -> torch.Tensor:
    with torch.no_grad():
        boxes = boxes.detach().to(features.dtype)
        offset = 0.5 if aligned else 0.0
        x0, y0 = boxes[..., 0] * spatial_scale - offset, boxes[..., 1] * spatial_scale - offset
        w = boxes[..., 2] * spatial_scale - offset - x0
        h = boxes[..., 3] * spatial_scale - offset - y0
        if not aligned:
            w, h = w.clamp(min=1.0), h.clamp(min=1.0)
        wy = _axis_weights(y0, h, output_size[0], sampling_ratio, features.shape[-2])  # (B, P, oh, H)
        wx = _axis_weights(x0, w, output_size[1], sampling_ratio, features.shape[-1])  # (B, P, ow, W)
        if mask is not None:
            wy = wy * mask[..., None, None].to(wy.dtype)
    # Two contractions with constant weights: linear in the features, so reverse mode, double
    # backward and forward mode are all exact (torchvision's kernel has only a first backward).
    rows = torch.einsum("bpyh,bchw->bpcyw", wy, features)
    return torch.einsum("bpcyw,bpxw->bpcyx", rows, wx)


def _size_pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    oh, ow = output_size
    return int(oh), int(ow)


def roi_align(features: torch.Tensor, boxes: torch.Tensor, output_size: int | Sequence[int], spatial_scale: float,
              sampling_ratio: int = ROI_SAMPLING_RATIO, aligned: bool = False) -> torch.Tensor:
    """torchvision.ops.roi_align for a fixed number of boxes per image, in pure torch.

    ``features`` (B, C, H, W), ``boxes`` (B, P, 4) ``[x0, y0, x1, y1]`` in input pixels ->
    (B, P, C, oh, ow). The boxes are treated as constants (no gradient reaches them).
    ``sampling_ratio`` must be positive: torchvision's adaptive grid (<= 0) depends on each
    box's size, which a fixed-shape computation cannot follow.
    """
    if sampling_ratio <= 0:
        raise ValueError("roi_align: sampling_ratio must be positive")
    return _pool(features, boxes, _size_pair(output_size), spatial_scale, sampling_ratio, aligned, None)


def roi_levels(boxes: torch.Tensor, scales: Sequence[float], canonical_scale: float = 224.0,
               canonical_level: int = 4, eps: float = 1e-6) -> torch.Tensor:
    """torchvision's LevelMapper: the index into ``scales`` of the feature map that pools each box."""
    k_min = int(-math.log2(scales[0]))
    k_max = int(-math.log2(scales[-1]))
    boxes = boxes.detach()
    s = torch.sqrt((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))
    levels = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    return (levels.clamp(min=k_min, max=k_max).to(torch.int64) - k_min)


def multiscale_roi_align(features: Sequence[torch.Tensor], boxes: torch.Tensor, scales: Sequence[float],
                         output_size: int | Sequence[int] = ROI_OUTPUT_SIZE,
                         sampling_ratio: int = ROI_SAMPLING_RATIO) -> torch.Tensor:
    """torchvision's MultiScaleRoIAlign (aligned=False) for (B, P, 4) boxes -> (B, P, C, oh, ow)."""
    if sampling_ratio <= 0:
        raise ValueError("multiscale_roi_align: sampling_ratio must be positive")
    size = _size_pair(output_size)
    if len(features) == 1:
        return _pool(features[0], boxes, size, scales[0], sampling_ratio, False, None)
    levels = roi_levels(boxes, scales)
    count = int(-math.log2(scales[-1])) - int(-math.log2(scales[0])) + 1
    pooled = [_pool(features[k], boxes, size, scales[k], sampling_ratio, False, levels == k) for k in range(count)]
    return torch.stack(pooled).sum(0) if count > 1 else pooled[0]


def _infer_scale(feature_side: int, input_size: int) -> float:
    return 2.0 ** round(math.log2(feature_side / input_size))


# -------------------------------------------------------------------------------- model ---
class HardSigmoid(nn.Module):
    """nn.Hardsigmoid from differentiable ops: torch's fused kernel has no double backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 3).clamp(0, 6) / 6


class HardSwish(nn.Module):
    """nn.Hardswish from differentiable ops: torch's fused kernel has no double backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (x + 3).clamp(0, 6) / 6


def _twice_differentiable(module: nn.Module) -> None:
    """Swap MobileNetV3's hard activations (no parameters, so state dicts are unchanged)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Hardsigmoid):
            setattr(module, name, HardSigmoid())
        elif isinstance(child, nn.Hardswish):
            setattr(module, name, HardSwish())
        else:
            _twice_differentiable(child)


class FasterRCNNDetector(nn.Module):
    """torchvision's fasterrcnn_mobilenet_v3_large_320_fpn as one differentiable forward pass.

    ``forward(images)``: images (B, 3, S, S) in [0, 1], S = ``input_size`` -> (B, D), laid out as
    ``split_outputs`` describes. Submodules carry torchvision's names (``backbone``,
    ``rpn.head``, ``roi_heads.box_head``, ``roi_heads.box_predictor``), so state dicts are
    interchangeable with torchvision's ``FasterRCNN``.
    """

    def __init__(self, settings: Any) -> None:
        super().__init__()
        s = coerce(settings, FasterRCNNSettings)
        self.input_size = s.input_size
        self.num_classes = s.num_classes + 1
        self.num_proposals = s.proposals
        pretrained = s.weights is not None
        if not pretrained and s.trainable_backbone_layers != 6 and "trainable_backbone_layers" in s.model_fields_set:
            warnings.warn("faster-rcnn: trainable_backbone_layers has no effect without weights; every backbone "
                          "layer is trained (as torchvision does)", stacklevel=2)
        # torchvision's rule: a randomly initialised backbone trains everything with BatchNorm;
        # a pretrained one keeps its statistics frozen and freezes its early stages.
        norm = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
        trainable = s.trainable_backbone_layers if pretrained else 6
        self.backbone = _mobilenet_extractor(mobilenet_v3_large(weights=None, norm_layer=norm), True, trainable)
        _twice_differentiable(self.backbone)
        channels = self.backbone.out_channels
        self.rpn = nn.ModuleDict({"head": RPNHead(channels, ANCHORS_PER_LOCATION)})
        self.roi_heads = nn.ModuleDict({
            "box_head": TwoMLPHead(channels * ROI_OUTPUT_SIZE ** 2, REPRESENTATION_SIZE),
            "box_predictor": FastRCNNPredictor(REPRESENTATION_SIZE, self.num_classes),
        })

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"faster-rcnn expects images (B, 3, {size}, {size}), got {tuple(images.shape)}")
        b = images.shape[0]
        features = list(self.backbone(self.normalize(images)).values())
        sides = tuple(f.shape[-1] for f in features)
        if sides != feature_sizes(size) or any(f.shape[-2] != f.shape[-1] for f in features):
            raise RuntimeError(f"faster-rcnn: unexpected feature map sizes {sides} for input {size}")
        logits, deltas = self.rpn["head"](features)
        rpn_logits = torch.cat([x.permute(0, 2, 3, 1).reshape(b, -1) for x in logits], dim=1)
        rpn_deltas = torch.cat([d.reshape(b, -1, 4, d.shape[-2], d.shape[-1]).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)
                                for d in deltas], dim=1)
        with torch.no_grad():
            boxes, valid = self._proposals(rpn_logits.detach(), rpn_deltas.detach())
        roi_features = features[:ROI_FEATURE_MAPS]
        scales = [_infer_scale(f.shape[-1], size) for f in roi_features]
        pooled = multiscale_roi_align(roi_features, boxes, scales, ROI_OUTPUT_SIZE, ROI_SAMPLING_RATIO)
        hidden = self.roi_heads["box_head"](pooled.flatten(0, 1))
        class_logits, box_regression = self.roi_heads["box_predictor"](hidden)
        p = self.num_proposals
        rpn = torch.cat([rpn_logits[..., None], rpn_deltas], dim=-1).reshape(b, -1)
        per_proposal = torch.cat([boxes, valid[..., None], class_logits.reshape(b, p, -1),
                                  box_regression.reshape(b, p, -1)], dim=-1).reshape(b, -1)
        return torch.cat([rpn, per_proposal], dim=1)

    @staticmethod
    def normalize(images: torch.Tensor) -> torch.Tensor:
        # Made in the images' dtype, as torchvision does: buffers would hold float32 roundings.
        mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std

    def _proposals(self, logits: torch.Tensor, deltas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """torchvision's RPN.filter_proposals (without its score threshold), padded to P boxes."""
        size, p = self.input_size, self.num_proposals
        anchors = anchor_boxes(size).to(logits)
        counts = anchors_per_level(size)
        boxes = _clip(_decode(deltas, anchors, RPN_WEIGHTS), size)
        level = torch.cat([torch.full((n,), k, device=logits.device) for k, n in enumerate(counts)])
        top, start = [], 0
        for n in counts:
            top.append(logits[:, start:start + n].topk(min(RPN_PRE_NMS_TOP_N, n), dim=1).indices + start)
            start += n
        top_idx = torch.cat(top, dim=1)
        out = logits.new_zeros(logits.shape[0], p, 4)
        valid = logits.new_zeros(logits.shape[0], p)
        for i in range(logits.shape[0]):
            idx = top_idx[i]
            # NMS needs only the order of the scores: the logits keep it where sigmoid rounds to 1.
            cand, scores, lvl = boxes[i, idx], logits[i, idx], level[idx]
            keep = remove_small_boxes(cand, RPN_MIN_SIZE)
            cand, scores, lvl = cand[keep], scores[keep], lvl[keep]
            keep = batched_nms(cand, scores, lvl, RPN_NMS_IOU)[:p]
            out[i, : keep.numel()] = cand[keep]
            valid[i, : keep.numel()] = 1
        return out, valid


def _load_state(path: str) -> dict[str, torch.Tensor]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"faster-rcnn weights: no file {path!r}")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # torchvision's reference scripts save {"model": ..., "optimizer": ...}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"faster-rcnn weights {path!r}: expected a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights(model: FasterRCNNDetector, path: str) -> None:
    """Load a torchvision state dict into ``model``.

    Accepted: a full ``FasterRCNN`` state dict (torchvision's key names), or a MobileNetV3-Large
    classification state dict (``features.*``: the backbone's body; FPN and heads stay as
    initialised). A box predictor of a different class count (e.g. COCO's 91) is skipped with
    a warning, so the rest of a pretrained detector is fine-tuned; any other mismatch raises.
    """
    state = _load_state(path)
    own = model.state_dict()
    allowed_missing: set[str] = set()
    if any(k.startswith("features.") for k in state) and not any(k.startswith("backbone.") for k in state):
        state = {f"backbone.body.{k.removeprefix('features.')}": v for k, v in state.items()
                 if k.startswith("features.")}
        allowed_missing = {k for k in own if not k.startswith("backbone.body.")}
    mismatched = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched and all(k.startswith(PREDICTOR) for k in mismatched):
        shape = tuple(state[f"{PREDICTOR}cls_score.weight"].shape) if f"{PREDICTOR}cls_score.weight" in state else "?"
        warnings.warn(f"faster-rcnn weights {path!r}: the box predictor has another class count (cls_score "
                      f"{shape}, this model has {model.num_classes} = {model.num_classes - 1} classes + "
                      f"background); it keeps its random initialisation, everything else is loaded", stacklevel=2)
        allowed_missing |= {k for k in own if k.startswith(PREDICTOR)}
        state = {k: v for k, v in state.items() if not k.startswith(PREDICTOR)}
    elif mismatched:
        raise ValueError(f"faster-rcnn weights {path!r}: shapes differ from the model for "
                         + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:5]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in allowed_missing]
    if missing or unexpected:
        raise ValueError(f"faster-rcnn weights {path!r} do not fit torchvision's "
                         f"fasterrcnn_mobilenet_v3_large_320_fpn: missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected {list(unexpected)[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''}")


def build_faster_rcnn(settings: Any) -> FasterRCNNDetector:
    """A fresh detector for ``settings`` (FasterRCNNSettings or a dict), with ``settings.weights``
    loaded when given. Nothing is downloaded."""
    s = coerce(settings, FasterRCNNSettings)
    model = FasterRCNNDetector(s)
    if s.weights is not None:
        load_weights(model, s.weights)
    return model


# --------------------------------------------------------------------------------- loss ---
def _smooth_l1(x: torch.Tensor, beta: float) -> torch.Tensor:
    a = x.abs()
    return torch.where(a < beta, 0.5 * x * x / beta, a - 0.5 * beta)


def _expected_sampling(positive: torch.Tensor, negative: torch.Tensor, batch: int,
                       fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element weights and the per-image normaliser of BalancedPositiveNegativeSampler's
    expected loss. The sampler draws exactly ``min(n_pos, batch * fraction)`` positives and
    ``min(n_neg, batch - drawn positives)`` negatives uniformly, so each element's inclusion
    probability and the sample size (torchvision's divisor) are known without drawing."""
    n_pos = positive.sum(-1).to(torch.float64)
    n_neg = negative.sum(-1).to(torch.float64)
    take_pos = n_pos.clamp(max=int(batch * fraction))
    take_neg = torch.minimum(n_neg, batch - take_pos)
    p_pos = (take_pos / n_pos.clamp(min=1))[..., None]
    p_neg = (take_neg / n_neg.clamp(min=1))[..., None]
    weights = positive.to(torch.float64) * p_pos + negative.to(torch.float64) * p_neg
    return weights, (take_pos + take_neg).clamp(min=1)


def _rpn_targets(anchors: torch.Tensor, gt: torch.Tensor, gt_valid: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's Matcher(0.7, 0.3, allow_low_quality_matches=True) for every anchor:
    positive and negative masks (B, A) and the matched ground-truth boxes (B, A, 4)."""
    iou = _box_iou(anchors[None], gt)  # (B, A, M)
    iou = torch.where(gt_valid[:, None, :], iou, torch.full_like(iou, -1.0))
    best, match = iou.max(dim=-1)
    # Every ground truth keeps the anchors it overlaps most, even below 0.7; a ground truth
    # overlapping nothing would otherwise claim every anchor of IoU 0.
    highest = iou.max(dim=1, keepdim=True).values  # (B, 1, M)
    low_quality = ((iou == highest) & gt_valid[:, None, :] & (highest > 0)).any(-1)
    positive = (best >= RPN_FG_IOU) | low_quality
    negative = (best < RPN_BG_IOU) & ~low_quality
    matched = torch.gather(gt, 1, match[..., None].expand(-1, -1, 4))
    return positive, negative, matched


def faster_rcnn_loss_terms(outputs: torch.Tensor, targets: torch.Tensor, settings: Any) -> dict[str, torch.Tensor]:
    """torchvision's four Faster R-CNN losses per image, each (B,): ``loss_objectness``,
    ``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``.

    Matching follows torchvision (RPN: IoU >= 0.7 positive, < 0.3 negative, plus each ground
    truth's best anchors; RoI: IoU >= 0.5 foreground, else background; no ground-truth boxes are
    added to the proposals, as the forward pass does not see the targets). Sampling is replaced
    by its expectation (``_expected_sampling``) and normalised per image, so an image's loss is
    torchvision's expected loss of a batch of that one image. Padding proposals weigh 0.
    """
    s = coerce(settings, FasterRCNNSettings)
    out = split_outputs(outputs, s)
    dtype = outputs.dtype
    with torch.no_grad():
        targets = targets.detach().to(device=outputs.device, dtype=dtype)
        gt, gt_valid = targets[..., :4], targets[..., 4] >= 0
        gt_label = targets[..., 4].clamp(min=0).long() + 1
        anchors = anchor_boxes(s.input_size).to(outputs)
        positive, negative, matched = _rpn_targets(anchors, gt, gt_valid)
        rpn_weights, rpn_norm = _expected_sampling(positive, negative, RPN_BATCH, RPN_POSITIVE_FRACTION)
        rpn_weights, rpn_norm = rpn_weights.to(dtype), rpn_norm.to(dtype)
        rpn_box_weights = torch.where(positive, rpn_weights, torch.zeros_like(rpn_weights))
        rpn_reg_targets = _encode(matched, anchors.expand_as(matched), RPN_WEIGHTS)
        rpn_reg_targets = torch.where(positive[..., None], rpn_reg_targets, torch.zeros_like(rpn_reg_targets))

        proposals, valid = out.proposals.detach(), out.valid.detach() > 0.5
        iou = _box_iou(proposals, gt)  # (B, P, M)
        iou = torch.where(gt_valid[:, None, :], iou, torch.full_like(iou, -1.0))
        best, match = iou.max(dim=-1)
        foreground = (best >= ROI_FG_IOU) & valid
        background = ~foreground & valid
        labels = torch.where(foreground, torch.gather(gt_label, 1, match), torch.zeros_like(match))
        roi_weights, roi_norm = _expected_sampling(foreground, background, ROI_BATCH, ROI_POSITIVE_FRACTION)
        roi_weights, roi_norm = roi_weights.to(dtype), roi_norm.to(dtype)
        roi_box_weights = torch.where(foreground, roi_weights, torch.zeros_like(roi_weights))
        roi_reg_targets = _encode(torch.gather(gt, 1, match[..., None].expand(-1, -1, 4)), proposals, ROI_WEIGHTS)
        roi_reg_targets = torch.where(foreground[..., None], roi_reg_targets, torch.zeros_like(roi_reg_targets))

    x = out.rpn_logits
    bce = F.softplus(x) - x * positive.to(dtype)
    loss_objectness = (rpn_weights * bce).sum(-1) / rpn_norm
    rpn_box = _smooth_l1(out.rpn_deltas - rpn_reg_targets, SMOOTH_L1_BETA).sum(-1)
    loss_rpn_box_reg = (rpn_box_weights * rpn_box).sum(-1) / rpn_norm

    logits = out.class_logits
    ce = torch.logsumexp(logits, dim=-1) - torch.gather(logits, -1, labels[..., None]).squeeze(-1)
    loss_classifier = (roi_weights * ce).sum(-1) / roi_norm
    deltas = torch.gather(out.box_regression, 2, labels[..., None, None].expand(-1, -1, 1, 4)).squeeze(2)
    roi_box = _smooth_l1(deltas - roi_reg_targets, SMOOTH_L1_BETA).sum(-1)
    loss_box_reg = (roi_box_weights * roi_box).sum(-1) / roi_norm
    return {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg,
            "loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}


def faster_rcnn_losses(outputs: torch.Tensor, targets: torch.Tensor, settings: Any) -> torch.Tensor:
    """Per-image losses (B,): the sum of the four terms of ``faster_rcnn_loss_terms``."""
    terms = faster_rcnn_loss_terms(outputs, targets, settings)
    return (terms["loss_objectness"] + terms["loss_rpn_box_reg"] + terms["loss_classifier"]
            + terms["loss_box_reg"])


# --------------------------------------------------------------------------- detections ---
def faster_rcnn_detections(outputs: torch.Tensor, settings: Any) -> list[dict[str, torch.Tensor]]:
    """torchvision's postprocess_detections: per image ``{"boxes" (n, 4), "scores" (n,),
    "labels" (n,)}`` with 0-based class ids, in input pixels, best first."""
    s = coerce(settings, FasterRCNNSettings)
    with torch.no_grad():
        out = split_outputs(outputs.detach(), s)
        k = s.num_classes + 1
        boxes = _clip(_decode(out.box_regression, out.proposals[:, :, None, :], ROI_WEIGHTS), s.input_size)
        scores = torch.softmax(out.class_logits, dim=-1)
        labels = torch.arange(k, device=outputs.device).expand_as(scores)
        result = []
        for i in range(outputs.shape[0]):
            valid = out.valid[i] > 0.5
            b = boxes[i][valid][:, 1:].reshape(-1, 4)
            sc = scores[i][valid][:, 1:].reshape(-1)
            lb = labels[i][valid][:, 1:].reshape(-1)
            keep = torch.where(sc > s.conf_threshold)[0]
            b, sc, lb = b[keep], sc[keep], lb[keep]
            keep = remove_small_boxes(b, DETECTION_MIN_SIZE)
            b, sc, lb = b[keep], sc[keep], lb[keep]
            keep = batched_nms(b, sc, lb, s.nms_iou)[: s.max_detections]
            result.append({"boxes": b[keep], "scores": sc[keep], "labels": lb[keep] - 1})
    return result
