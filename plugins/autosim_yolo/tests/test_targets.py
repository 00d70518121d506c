"""Letterboxing, target packing and the detection tasks' collate against hand-computed answers."""

import pytest
import torch
from autosim_core.records import Example

from autosim_yolo.plugin import collate_detection
from autosim_yolo.settings import YoloSettings
from autosim_yolo.targets import letterbox, object_rows, pack_targets, unpack_targets


def test_letterbox_keeps_the_aspect_ratio_and_centres_the_content():
    image = torch.ones(3, 40, 80)
    out, scale, offset = letterbox(image, 160)
    assert out.shape == (3, 160, 160)
    assert scale == 2.0 and offset == (0.0, 40.0)
    # 80 rows of content in the middle, grey above and below.
    assert torch.all(out[:, 40:120] == 1.0)
    assert torch.all(out[:, :40] == 0.5) and torch.all(out[:, 120:] == 0.5)


def test_a_box_follows_its_object_through_the_letterbox():
    image = torch.zeros(3, 30, 60)
    image[:, 10:20, 15:45] = 1.0  # a bright rectangle, box [15, 10, 45, 20]
    out, scale, offset = letterbox(image, 120)
    rows = object_rows([{"category": "square", "box": [15, 10, 45, 20]}], ["circle", "square"], scale, offset, "x")
    x0, y0, x1, y1, cls = rows[0].tolist()
    assert cls == 1.0
    bright = (out[0] > 0.75).nonzero()
    assert (x0, y0) == pytest.approx((float(bright[:, 1].min()), float(bright[:, 0].min())), abs=1)
    assert (x1, y1) == pytest.approx((float(bright[:, 1].max()) + 1, float(bright[:, 0].max()) + 1), abs=1)


def test_pack_pads_with_minus_one_and_unpack_inverts_it():
    a = torch.tensor([[0.0, 0.0, 4.0, 4.0, 2.0], [1.0, 1.0, 3.0, 5.0, 0.0]])
    b = torch.zeros(0, 5)
    packed = pack_targets([a, b])
    assert packed.shape == (2, 2, 5)
    assert packed[1, :, 4].tolist() == [-1.0, -1.0]
    back = unpack_targets(packed)
    assert torch.equal(back[0]["boxes"], a[:, :4]) and back[0]["labels"].tolist() == [2, 0]
    assert back[1]["boxes"].shape == (0, 4) and back[1]["labels"].numel() == 0
    assert pack_targets([b]).shape == (1, 1, 5)


def test_occluded_and_degenerate_objects_are_left_out_and_unknown_classes_are_an_error():
    objects = [{"category": "circle", "box": [0, 0, 5, 5], "visible_fraction": 0.05},
               {"category": "circle", "box": [3, 3, 3, 8]},
               {"category": "circle", "box": [1, 2, 3, 4], "visible_fraction": 0.5}]
    rows = object_rows(objects, ["circle"], 1.0, (0.0, 0.0), "s", min_visible_fraction=0.1)
    assert rows.tolist() == [[1.0, 2.0, 3.0, 4.0, 0.0]]
    with pytest.raises(ValueError, match=r"example 's': object category 'duck' is not one of the task's classes"):
        object_rows([{"category": "duck", "box": [0, 0, 1, 1]}], ["circle"], 1.0, (0.0, 0.0), "s")


def test_collate_letterboxes_images_of_different_sizes_into_one_batch():
    settings = YoloSettings(input_size=64)
    examples = [Example(image=torch.rand(3, 32, 64), objects=[{"category": "triangle", "box": [0, 0, 32, 16]}],
                        scene={"id": 7}),
                Example(image=(torch.rand(3, 64, 64) * 255).to(torch.uint8), objects=[])]
    batch = collate_detection(examples, settings)
    assert batch.inputs.shape == (2, 3, 64, 64)
    assert float(batch.inputs.max()) <= 1.0
    assert batch.targets.shape == (2, 1, 5)
    assert batch.targets[0].tolist() == [[0.0, 16.0, 32.0, 32.0, 2.0]]
    assert batch.targets[1, 0, 4] == -1
    with pytest.raises(ValueError, match="example 3: image must be"):
        collate_detection([Example(image=torch.rand(4, 8, 8), scene={"id": 3})], settings)
