"""Decoding raw YOLO outputs into boxes, and detections with per-class NMS."""

from __future__ import annotations

import math

import pytest
import torch

from autosim_yolo.decode import decode_boxes, yolo_detections
from autosim_yolo.settings import YoloSettings

SIZE = 64
N_TINY = 3 * (2 * 2 + 4 * 4)
# Anchors of yolov3-tiny at 64 px: Darknet's (at 416) times 64 / 416.
A3 = (81 * SIZE / 416, 82 * SIZE / 416)
A1 = (23 * SIZE / 416, 27 * SIZE / 416)


def _settings(**kw) -> YoloSettings:
    base = {"variant": "tiny", "input_size": SIZE, "width": 0.125, "classes": ["a", "b"]}
    return YoloSettings(**{**base, **kw})


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_decode_by_hand():
    s = _settings()
    out = torch.zeros(1, N_TINY, 7, dtype=torch.float64)
    # Prediction 1: stride-32 head, anchor 3, cell (1, 0).
    out[0, 1] = torch.tensor([_logit(0.75), _logit(0.25), math.log(2), 0.0, _logit(0.9), _logit(0.2), _logit(0.6)])
    # Prediction 12 + 16 + 2 * 4 + 3 = 39: stride-16 head, anchor 1, cell (3, 2).
    out[0, 39, :4] = torch.tensor([0.0, 0.0, 0.0, math.log(0.5)])
    boxes, objectness, classes = decode_boxes(out, s)
    assert boxes.shape == (1, N_TINY, 4) and objectness.shape == (1, N_TINY) and classes.shape == (1, N_TINY, 2)
    cx, cy, w, h = 1.75 * 32, 0.25 * 32, 2 * A3[0], A3[1]
    assert boxes[0, 1].tolist() == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    assert objectness[0, 1].item() == pytest.approx(0.9)
    assert classes[0, 1].tolist() == pytest.approx([0.2, 0.6])
    cx, cy, w, h = 3.5 * 16, 2.5 * 16, A1[0], A1[1] / 2
    assert boxes[0, 39].tolist() == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    # Prediction 0 with zeros: anchor 3 at the centre of cell (0, 0).
    assert boxes[0, 0].tolist() == pytest.approx([16 - A3[0] / 2, 16 - A3[1] / 2, 16 + A3[0] / 2, 16 + A3[1] / 2])
    assert objectness[0, 0].item() == 0.5


def test_huge_sizes_stay_finite():
    out = torch.zeros(1, N_TINY, 7)
    out[0, :, 2:4] = 1e4
    boxes, _, _ = decode_boxes(out, _settings())
    assert torch.isfinite(boxes).all()


def _raw_for(out: torch.Tensor, index: int, box: tuple[float, float, float, float], obj: float,
             cls: tuple[float, ...]) -> None:
    """Set prediction ``index`` of the stride-32 head (anchor ``3 + index // 4``, cell
    ``index % 4``) to decode to ``box`` with these probabilities."""
    slot, cell = divmod(index, 4)
    gy, gx = divmod(cell, 2)
    aw, ah = [A3, (135 * SIZE / 416, 169 * SIZE / 416), (344 * SIZE / 416, 319 * SIZE / 416)][slot]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    out[0, index, :5] = torch.tensor([_logit(cx / 32 - gx), _logit(cy / 32 - gy), math.log((box[2] - box[0]) / aw),
                                      math.log((box[3] - box[1]) / ah), _logit(obj)])
    out[0, index, 5:] = torch.tensor([_logit(c) for c in cls])


def _hand_made() -> torch.Tensor:
    out = torch.full((1, N_TINY, 7), -20.0, dtype=torch.float64)  # scores ~ 4e-18: below any threshold
    _raw_for(out, 0, (4, 4, 28, 28), 0.9, (0.9, 1e-6))            # A: class a, score 0.81
    _raw_for(out, 4, (5, 5, 29, 29), 0.8, (0.9, 1e-6))            # B: on A (IoU 0.85), class a, 0.72
    _raw_for(out, 1, (36, 4, 60, 28), 0.7, (1e-6, 0.9))           # C: elsewhere, class b, 0.63
    _raw_for(out, 8, (4, 4, 28, 28), 0.9, (1e-6, 0.5))            # D: on A but class b, 0.45
    _raw_for(out, 2, (4, 36, 28, 60), 0.9, (0.0005, 1e-6))        # E: score 0.00045, below 0.001
    return out


def test_nms_by_hand():
    (det,) = yolo_detections(_hand_made(), _settings())
    assert det["labels"].dtype == torch.int64
    assert det["scores"].tolist() == pytest.approx([0.81, 0.63, 0.45])
    assert det["labels"].tolist() == [0, 1, 1]
    assert det["boxes"].flatten().tolist() == pytest.approx([4, 4, 28, 28, 36, 4, 60, 28, 4, 4, 28, 28])


def test_nms_iou_and_thresholds_are_respected():
    out = _hand_made()
    # At nms_iou 0.9 the overlap of A and B (0.85) is not enough to suppress B.
    (det,) = yolo_detections(out, _settings(nms_iou=0.9))
    assert det["scores"].tolist() == pytest.approx([0.81, 0.72, 0.63, 0.45])
    (det,) = yolo_detections(out, _settings(conf_threshold=0.0001))
    assert det["scores"].tolist() == pytest.approx([0.81, 0.63, 0.45, 0.00045])
    (det,) = yolo_detections(out, _settings(conf_threshold=0.5))
    assert det["scores"].tolist() == pytest.approx([0.81, 0.63])
    (det,) = yolo_detections(out, _settings(max_detections=2))
    assert det["scores"].tolist() == pytest.approx([0.81, 0.63])


def test_multi_label_prediction_gives_one_detection_per_class():
    out = torch.full((1, N_TINY, 7), -20.0)
    _raw_for(out, 3, (40, 40, 60, 60), 0.5, (0.8, 0.6))
    (det,) = yolo_detections(out, _settings())
    assert det["labels"].tolist() == [0, 1]
    assert det["scores"].tolist() == pytest.approx([0.4, 0.3])


def test_boxes_are_clipped_and_empty_images_give_empty_tensors():
    out = torch.full((2, N_TINY, 7), -20.0)
    _raw_for(out, 0, (-10, -6, 20, 30), 0.9, (0.9, 1e-6))
    first, second = yolo_detections(out, _settings())
    assert first["boxes"].flatten().tolist() == pytest.approx([0, 0, 20, 30])
    assert second["boxes"].shape == (0, 4) and second["scores"].shape == (0,) and second["labels"].shape == (0,)
    assert second["labels"].dtype == torch.int64


def test_detections_do_not_track_gradients():
    out = torch.zeros(1, N_TINY, 7, requires_grad=True)
    (det,) = yolo_detections(out, _settings())
    assert not det["scores"].requires_grad and len(det["scores"]) <= 100
