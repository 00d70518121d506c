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


def test_occluded_objects_are_left_out_and_unknown_classes_are_an_error_naming_the_class_list():
    objects = [{"category": "circle", "box": [0, 0, 5, 5], "visible_fraction": 0.05},
               {"category": "circle", "box": [1, 2, 3, 4], "visible_fraction": 0.5}]
    rows = object_rows(objects, ["circle"], 1.0, (0.0, 0.0), "s", min_visible_fraction=0.1)
    assert rows.tolist() == [[1.0, 2.0, 3.0, 4.0, 0.0]]
    with pytest.raises(ValueError, match=r"example 's': object category 'duck' is not one of the task's classes "
                                         r"\['circle'\] \(from the simulator's labels hook\)"):
        object_rows([{"category": "duck", "box": [0, 0, 1, 1]}], ["circle"], 1.0, (0.0, 0.0), "s",
                    classes_source="the simulator's labels hook")


def test_a_box_reaching_outside_the_image_is_clipped_to_it(caplog):
    # The 16 x 8 image is letterboxed to 32: scale 2, content offset (0, 8).
    objects = [{"category": "circle", "box": [-3.0, 2.0, 5.0, 11.0]},  # left and bottom outside
               {"category": "circle", "box": [12.0, 1.0, 16.0000001, 4.0]}]  # on the edge up to rounding
    with caplog.at_level("WARNING", logger="autosim"):
        rows = object_rows(objects, ["circle"], 2.0, (0.0, 8.0), "s", image_size=(8, 16))
    assert rows.flatten().tolist() == pytest.approx([0.0, 12.0, 10.0, 24.0, 0.0, 24.0, 10.0, 32.0, 16.0, 0.0])


@pytest.mark.parametrize(("box", "why"), [
    ([20.0, 2.0, 30.0, 6.0], r"has no area once clipped to the image"),  # wholly right of the image
    ([3.0, 3.0, 3.0, 8.0], r"has no area \(x1 > x0"),  # zero width
    ([5.0, 6.0, 2.0, 7.0], r"has no area \(x1 > x0"),  # corners swapped
    ([1.0, float("nan"), 3.0, 4.0], r"is not finite"),
])
def test_a_box_with_no_area_in_the_image_is_an_error_naming_the_example(box, why):
    with pytest.raises(ValueError, match=rf"^example 'scene-7': object 'circle': box .* {why}"):
        object_rows([{"category": "circle", "box": box}], ["circle"], 1.0, (0.0, 0.0), "scene-7",
                    image_size=(8, 16))


def test_collate_clips_a_render_box_and_says_so_once(caplog):
    from autosim_yolo import targets

    targets._CLIP_REPORTED.clear()
    settings = YoloSettings(input_size=64)
    example = Example(image=torch.rand(3, 32, 64), scene={"id": "r1"},
                      objects=[{"category": "circle", "box": [50.0, -4.0, 70.0, 10.0]}])
    with caplog.at_level("WARNING", logger="autosim"):
        first = collate_detection([example], settings)
        collate_detection([example], settings)
    # Clipped to [50, 0, 64, 10]; the letterbox keeps the scale (1) and moves y by 16.
    assert first.targets[0].tolist() == [[50.0, 16.0, 64.0, 26.0, 0.0]]
    notes = [r.getMessage() for r in caplog.records if "outside the image" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith("example 'r1': object 'circle': box [50.0, -4.0, 70.0, 10.0]")


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
