"""COCO mAP of detections against padded targets, checked against AP computed from its definition."""

import math

import pytest
import torch

from autosim_yolo.metrics import detection_metrics
from autosim_yolo.targets import pack_targets

CLASSES = ["circle", "square", "triangle"]


def det(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def truth(*per_image):
    """Per image a list of (x0, y0, x1, y1, class_id) -> the padded tensor."""
    return pack_targets([torch.tensor(rows, dtype=torch.float32).reshape(-1, 5) for rows in per_image])


def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def coco_ap_101(dets, gts, threshold=0.5):
    """AP of one class from COCO's definition, written out independently of any evaluator.

    ``dets``: (image, box, score); ``gts``: (image, box). Detections are taken in decreasing
    score and each is matched greedily to the unmatched ground-truth box of its image with the
    highest IoU >= threshold. Precision is made monotone (the maximum over higher recalls) and
    sampled at the 101 recalls 0, 0.01, ..., 1; a recall never reached contributes 0.
    """
    used = set()
    hits = []
    for image, box, _ in sorted(dets, key=lambda d: -d[2]):
        best, best_iou = None, threshold
        for j, (g_image, g_box) in enumerate(gts):
            if g_image == image and j not in used and iou(box, g_box) >= best_iou:
                best, best_iou = j, iou(box, g_box)
        if best is not None:
            used.add(best)
        hits.append(best is not None)
    recall, precision, tp = [], [], 0
    for k, hit in enumerate(hits, 1):
        tp += hit
        recall.append(tp / len(gts))
        precision.append(tp / k)
    for k in range(len(precision) - 2, -1, -1):
        precision[k] = max(precision[k], precision[k + 1])
    total = 0.0
    for r in (i / 100 for i in range(101)):
        reached = [p for rc, p in zip(recall, precision, strict=True) if rc >= r]
        total += reached[0] if reached else 0.0
    return total / 101


def test_perfect_predictions_score_one():
    targets = truth([(0, 0, 10, 10, 0), (20, 20, 40, 30, 1)], [(5, 5, 25, 45, 2)])
    detections = [det([[0, 0, 10, 10], [20, 20, 40, 30]], [0.9, 0.8], [0, 1]), det([[5, 5, 25, 45]], [0.7], [2])]
    m = detection_metrics(detections, targets, CLASSES)
    assert m["metric"] == m["map_50"] == 1.0
    assert m["map"] == 1.0 and m["map_75"] == 1.0
    assert {m[f"ap50_{name}"] for name in CLASSES} == {1.0}


def test_one_hit_and_a_lower_false_positive():
    # Two ground-truth boxes of one class: one found exactly, one missed; a false positive
    # ranked below the hit. Recall 1/2 is reached at precision 1 -> 51 of the 101 recalls.
    targets = truth([(0, 0, 10, 10, 0), (50, 50, 60, 60, 0)])
    detections = [det([[0, 0, 10, 10], [100, 100, 110, 110]], [0.9, 0.5], [0, 0])]
    expected = coco_ap_101([(0, [0, 0, 10, 10], 0.9), (0, [100, 100, 110, 110], 0.5)],
                           [(0, [0, 0, 10, 10]), (0, [50, 50, 60, 60])])
    assert expected == pytest.approx(51 / 101)
    m = detection_metrics(detections, targets, CLASSES)
    assert m["map_50"] == pytest.approx(expected, abs=1e-6)
    assert m["ap50_circle"] == pytest.approx(expected, abs=1e-6)
    # An exact hit matches at every IoU threshold, so 0.5:0.95 gives the same AP.
    assert m["map"] == pytest.approx(expected, abs=1e-6)


def test_interleaved_hits_over_two_images():
    gts = [(0, [0, 0, 20, 20]), (0, [40, 40, 60, 60]), (1, [10, 10, 30, 30])]
    dets = [(0, [0, 0, 20, 20], 0.9), (1, [70, 70, 90, 90], 0.8), (1, [11, 10, 30, 31], 0.7),
            (0, [0, 1, 20, 21], 0.6)]  # the last one duplicates a matched box: a false positive
    expected = coco_ap_101(dets, gts)
    assert expected == pytest.approx(56 / 101)
    targets = truth(*[[(*box, 1) for image, box in gts if image == i] for i in (0, 1)])
    detections = [det([d[1] for d in dets if d[0] == i], [d[2] for d in dets if d[0] == i],
                      [1] * sum(d[0] == i for d in dets)) for i in (0, 1)]
    m = detection_metrics(detections, targets, CLASSES)
    assert m["map_50"] == pytest.approx(expected, abs=1e-6)
    assert m["ap50_square"] == pytest.approx(expected, abs=1e-6)


def test_loose_box_counts_at_iou_50_only():
    targets = truth([(0, 0, 100, 100, 0)])
    detections = [det([[0, 0, 62, 100]], [0.9], [0])]  # IoU 0.62: a hit at 0.50, 0.55, 0.60 only
    m = detection_metrics(detections, targets, CLASSES)
    assert m["map_50"] == pytest.approx(1.0)
    assert m["map_75"] == pytest.approx(0.0)
    assert m["map"] == pytest.approx(0.3)


def test_per_class_keys_and_their_mean():
    targets = truth([(0, 0, 10, 10, 0), (30, 30, 40, 40, 1), (60, 60, 70, 70, 1)])
    detections = [det([[0, 0, 10, 10], [30, 30, 40, 40], [80, 0, 90, 10], [0, 80, 10, 90]],
                      [0.9, 0.8, 0.7, 0.95], [0, 1, 1, 2])]
    m = detection_metrics(detections, targets, CLASSES)
    assert m["ap50_circle"] == pytest.approx(1.0)
    assert m["ap50_square"] == pytest.approx(51 / 101, abs=1e-6)
    # "triangle" has a detection but no ground truth: AP is undefined, so no key, and its
    # detection leaves the other classes alone.
    assert "ap50_triangle" not in m
    assert m["map_50"] == pytest.approx((m["ap50_circle"] + m["ap50_square"]) / 2, abs=1e-6)
    assert set(m) == {"metric", "map_50", "map", "map_75", "ap50_circle", "ap50_square"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())


def test_empty_detections_score_zero():
    targets = truth([(0, 0, 10, 10, 0)], [(5, 5, 15, 15, 2)], [])
    empty = det([], [], [])
    m = detection_metrics([empty, empty, empty], targets, CLASSES)
    assert m["metric"] == m["map_50"] == m["map"] == m["map_75"] == 0.0
    assert m["ap50_circle"] == 0.0 and m["ap50_triangle"] == 0.0
    assert "ap50_square" not in m


def test_detections_on_the_wrong_class_score_zero():
    targets = truth([(0, 0, 10, 10, 0)])
    m = detection_metrics([det([[0, 0, 10, 10]], [0.9], [1])], targets, CLASSES)
    assert m["metric"] == 0.0 and m["ap50_circle"] == 0.0


def test_no_ground_truth_is_an_error():
    targets = truth([], [])
    with pytest.raises(ValueError, match="no ground-truth boxes in the 2 images"):
        detection_metrics([det([[0, 0, 1, 1]], [0.5], [0]), det([], [], [])], targets, CLASSES)


def test_shape_errors():
    targets = truth([(0, 0, 10, 10, 0)])
    with pytest.raises(ValueError, match="1 detection dicts for 2 images"):
        detection_metrics([det([], [], [])], truth([(0, 0, 1, 1, 0)], []), CLASSES)
    with pytest.raises(ValueError, match=r"detections\[0\]: 1 boxes, 2 scores"):
        detection_metrics([det([[0, 0, 1, 1]], [0.5, 0.4], [0])], targets, CLASSES)
    with pytest.raises(ValueError, match="lacks"):
        detection_metrics([{"boxes": torch.zeros(0, 4)}], targets, CLASSES)
    with pytest.raises(ValueError, match="padded tensor"):
        detection_metrics([det([], [], [])], targets[0], CLASSES)
    with pytest.raises(ValueError, match="class id 0 but only 0 classes"):
        detection_metrics([det([], [], [])], targets, [])


def test_streaming_detections_equal_the_metrics_of_the_whole_set():
    """Chunks decoded one at a time, their targets padded to different widths, score as the
    whole set's detections against its targets; and only detections are kept."""
    from autosim_yolo.plugin import DetectionAccumulator

    per_image = [det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.4], [0, 1]), det([[5, 5, 15, 15]], [0.8], [0]),
                 det([], [], []), det([[1, 1, 9, 9], [40, 40, 50, 52]], [0.7, 0.6], [0, 2])]
    gts = [[(0, 0, 10, 10, 0), (20, 20, 31, 30, 1)], [(30, 30, 40, 40, 0)], [(0, 0, 4, 4, 2)],
           [(0, 0, 10, 10, 0), (40, 40, 50, 50, 2), (60, 60, 70, 70, 1)]]
    whole = detection_metrics(per_image, truth(*gts), CLASSES)
    chunks = [(0, 1), (1, 3), (3, 4)]  # their padded targets are 2, 1 and 3 rows wide
    raw = [object() for _ in per_image]  # what the decoder receives stands for raw network outputs
    decoded = dict(zip(map(id, raw), per_image, strict=True))
    accumulator = DetectionAccumulator(lambda outputs: [decoded[id(o)] for o in outputs], CLASSES)
    for a, b in chunks:
        accumulator.update(raw[a:b], truth(*gts[a:b]))
    assert [t.shape[1] for t in accumulator.targets] == [2, 1, 3]
    assert accumulator.compute() == whole
    assert 0 < whole["metric"] < 1
