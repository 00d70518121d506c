"""Confusion matrix and IoU against hand-computed values and torchmetrics."""

import math

import pytest
import torch

from autosim_unet.metrics import confusion_matrix, iou_per_class, segmentation_metrics
from autosim_unet.plugin import UNetTask

# Ten pixels, classes background/sphere/cube/cylinder; cylinder appears in neither.
TARGETS = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 0, 0])
PREDS = torch.tensor([0, 1, 0, 1, 1, 2, 2, 0, 0, 0])
# By hand: cm[t, p] counts target t predicted as p.
HAND_CM = torch.tensor([[4, 1, 0, 0],
                        [0, 2, 1, 0],
                        [1, 0, 1, 0],
                        [0, 0, 0, 0]])
# IoU = tp / (row + col - tp): background 4/(5+5-4), sphere 2/(3+3-2), cube 1/(2+2-1).
HAND_IOU = [4 / 6, 2 / 4, 1 / 3, None]


def one_hot_logits(preds: torch.Tensor, num_classes: int = 4) -> torch.Tensor:
    """Logits (1, C, 1, n) whose argmax is ``preds``."""
    return torch.nn.functional.one_hot(preds, num_classes).float().T[None, :, None, :]


def test_confusion_matrix_by_hand():
    assert torch.equal(confusion_matrix(PREDS, TARGETS, 4), HAND_CM)


def test_iou_by_hand_with_absent_class():
    ious = iou_per_class(HAND_CM)
    assert ious[3] is None
    assert ious[:3] == pytest.approx(HAND_IOU[:3])


def test_evaluate_hook_excludes_background_and_absent_classes():
    metrics = UNetTask().evaluate(outputs=one_hot_logits(PREDS), targets=TARGETS[None, None, :],
                                  settings={"num_classes": 4})
    # Foreground mean over sphere and cube only; counting the absent cylinder as 0 would give 5/18.
    assert metrics["metric"] == pytest.approx((2 / 4 + 1 / 3) / 2)
    assert metrics["iou_background"] == pytest.approx(4 / 6)
    assert metrics["iou_sphere"] == pytest.approx(0.5)
    assert metrics["iou_cube"] == pytest.approx(1 / 3)
    assert "iou_cylinder" not in metrics
    assert metrics["miou_all"] == pytest.approx((4 / 6 + 1 / 2 + 1 / 3) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(7 / 10)


def test_ignored_pixels_count_nowhere():
    targets = torch.cat([TARGETS, torch.tensor([255, 255])])
    preds = torch.cat([PREDS, torch.tensor([3, 1])])
    metrics = UNetTask().evaluate(outputs=one_hot_logits(preds), targets=targets[None, None, :],
                                  settings={"num_classes": 4, "ignore_index": 255})
    assert "iou_cylinder" not in metrics
    assert metrics["metric"] == pytest.approx((2 / 4 + 1 / 3) / 2)
    assert metrics["pixel_accuracy"] == pytest.approx(7 / 10)


def test_predicted_but_absent_class_counts_as_zero():
    preds = PREDS.clone()
    preds[0] = 3  # a false cylinder: IoU 0 for a class that is now present
    metrics = segmentation_metrics(confusion_matrix(preds, TARGETS, 4), ["bg", "a", "b", "c"])
    assert metrics["iou_c"] == 0.0
    assert metrics["metric"] == pytest.approx((2 / 4 + 1 / 3 + 0) / 3)


def test_no_foreground_anywhere_is_perfect():
    cm = confusion_matrix(torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long), 3)
    assert segmentation_metrics(cm, ["bg", "a", "b"])["metric"] == 1.0


def test_out_of_range_target_is_an_error():
    with pytest.raises(ValueError, match="class ids"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.tensor([0, 1, 7]), 4)


def test_per_class_iou_matches_torchmetrics():
    from torchmetrics.classification import MulticlassJaccardIndex

    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 5, (3, 12, 12), generator=g)
    targets[targets == 4] = 0  # class 4 absent from the targets...
    preds = torch.where(torch.rand(3, 12, 12, generator=g) < 0.6, targets,
                        torch.randint(0, 4, (3, 12, 12), generator=g))  # ...and from the predictions
    ours = iou_per_class(confusion_matrix(preds, targets, 5))
    reference = MulticlassJaccardIndex(num_classes=5, average="none")(preds, targets)
    assert ours[4] is None
    for c in range(4):
        assert ours[c] == pytest.approx(float(reference[c]), abs=1e-6)
    expected = sum(float(reference[c]) for c in (1, 2, 3)) / 3
    metric = segmentation_metrics(confusion_matrix(preds, targets, 5), [str(i) for i in range(5)])["metric"]
    assert math.isclose(metric, expected, rel_tol=1e-6)


@pytest.mark.parametrize("ignore_index", [None, 255])
def test_streaming_confusion_equals_evaluate_on_the_whole_set(ignore_index):
    """Metrics added up over uneven chunks equal ``evaluate`` on the concatenated outputs."""
    from autosim_unet.plugin import ConfusionAccumulator, UNetSettings

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(11, 4, 6, 5, generator=gen)
    masks = torch.randint(0, 4, (11, 6, 5), generator=gen)
    masks[masks == 3] = 2  # cylinder absent from the targets, present in some predictions
    if ignore_index is not None:
        masks[torch.rand(masks.shape, generator=gen) < 0.2] = ignore_index
    settings = UNetSettings(num_classes=4, ignore_index=ignore_index)
    whole = UNetTask().evaluate(outputs=logits, targets=masks, settings=settings)
    accumulator = UNetTask().metric_accumulator(settings=settings)
    assert isinstance(accumulator, ConfusionAccumulator)
    for start in range(0, 11, 4):
        accumulator.update(logits[start:start + 4], masks[start:start + 4])
    assert accumulator.compute() == whole
    keep = masks != (ignore_index if ignore_index is not None else -1)
    assert int(accumulator.cm.sum()) == int(keep.sum())  # every labelled pixel counted once
