"""Detection datasets in the COCO, BOP and ``autosim generate`` layouts, and the errors users see."""

import json

import pytest
import torch
from autosim_core.export import write_examples
from autosim_core.records import Example
from PIL import Image

from autosim_yolo.data import (
    DatasetError,
    find_coco_json,
    load_bop,
    load_coco,
    load_detection_folder,
    load_generated,
    write_coco,
)
from autosim_yolo.targets import object_rows


def png(path, width=16, height=12, colour=(200, 40, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), colour).save(path)


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


# -- COCO ---------------------------------------------------------------------------------------

def coco_folder(root):
    png(root / "images" / "b.png")
    png(root / "images" / "a.png", colour=(0, 0, 255))
    png(root / "images" / "empty.png")
    write_json(root / "annotations.json", {
        "images": [{"id": 10, "file_name": "b.png", "width": 16, "height": 12},
                   {"id": 11, "file_name": "a.png", "width": 16, "height": 12},
                   {"id": 12, "file_name": "empty.png"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [5.5, 0, 2, 6], "area": 12, "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 3, "bbox": [0, 0, 16, 12], "area": 192, "iscrowd": 1},
            {"id": 4, "image_id": 11, "category_id": 3, "bbox": [2, 2, 4, 4], "area": 16},
        ],
        "categories": [{"id": 3, "name": "cup"}, {"id": 7, "name": "box"}],
    })
    return root


def test_coco_boxes_names_crowds_and_empty_images(tmp_path):
    examples = load_coco(coco_folder(tmp_path / "coco"))
    assert [e.scene["id"] for e in examples] == ["a.png", "b.png", "empty.png"]
    a, b, empty = examples
    assert b.image.shape == (3, 12, 16) and b.image.dtype == torch.float32
    assert 0.0 <= float(b.image.min()) and float(b.image.max()) <= 1.0
    assert torch.allclose(a.image[:, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    # The crowd region is left out; [x, y, w, h] -> [x0, y0, x1, y1].
    assert b.objects == [{"category": "box", "box": [1.0, 2.0, 4.0, 6.0]},
                         {"category": "cup", "box": [5.5, 0.0, 7.5, 6.0]}]
    assert a.objects == [{"category": "cup", "box": [2.0, 2.0, 6.0, 6.0]}]
    assert empty.objects == [] and b.scene["image_id"] == 10


def test_coco_limit_and_max_size(tmp_path):
    root = coco_folder(tmp_path / "coco")
    assert [e.scene["id"] for e in load_coco(root, limit=2)] == ["a.png", "b.png"]
    (b,) = load_coco(root / "annotations.json", limit=2, max_size=8)[1:]
    assert b.image.shape == (3, 6, 8) and b.scene["scale"] == [0.5, 0.5]
    assert b.objects[0]["box"] == [0.5, 1.0, 2.0, 3.0]


def test_coco_release_layout(tmp_path):
    # COCO's own: annotations/instances_val2017.json describing the images in val2017/.
    png(tmp_path / "val2017" / "000000000139.png")
    write_json(tmp_path / "annotations" / "instances_val2017.json", {
        "images": [{"id": 139, "file_name": "000000000139.png", "width": 16, "height": 12}],
        "annotations": [{"id": 1, "image_id": 139, "category_id": 1, "bbox": [0, 0, 2, 2]}],
        "categories": [{"id": 1, "name": "person"}]})
    for path in (tmp_path, tmp_path / "annotations" / "instances_val2017.json"):
        (example,) = load_coco(path)
        assert example.objects == [{"category": "person", "box": [0.0, 0.0, 2.0, 2.0]}]


def test_coco_json_lookup(tmp_path):
    write_json(tmp_path / "a" / "annotations.json", {})
    write_json(tmp_path / "a" / "other.json", {})
    assert find_coco_json(tmp_path / "a") == tmp_path / "a" / "annotations.json"
    write_json(tmp_path / "b" / "instances_train.json", {})
    write_json(tmp_path / "b" / "instances_val.json", {})
    with pytest.raises(DatasetError, match=r"several COCO JSON candidates \(instances_train.json, instances_val.json"):
        find_coco_json(tmp_path / "b")
    write_json(tmp_path / "c" / "_annotations.coco.json", {})
    assert find_coco_json(tmp_path / "c").name == "_annotations.coco.json"
    (tmp_path / "d").mkdir()
    with pytest.raises(DatasetError, match=r"d: no COCO JSON found"):
        find_coco_json(tmp_path / "d")


def test_coco_errors_name_the_problem(tmp_path):
    root = coco_folder(tmp_path / "coco")
    (root / "images" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"image 'a.png' not found in .*\(pass image_root\)"):
        load_coco(root)
    png(root / "images" / "a.png", width=20)
    with pytest.raises(DatasetError, match=r"a.png: image is 20x12 but annotations.json says 16x12"):
        load_coco(root)
    data = json.loads((root / "annotations.json").read_text())
    data["annotations"][0]["category_id"] = 99
    write_json(root / "annotations.json", data)
    with pytest.raises(DatasetError, match=r"annotation 1: category_id 99 is not in 'categories'"):
        load_coco(root)
    write_json(root / "annotations.json", {"annotations": []})
    with pytest.raises(DatasetError, match=r"annotations.json: not a COCO detection file"):
        load_coco(root)
    (root / "annotations.json").write_text("{oops")
    with pytest.raises(DatasetError, match=r"annotations.json: not valid JSON"):
        load_coco(root)


def test_write_coco_round_trip_and_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    g = torch.Generator().manual_seed(0)
    examples = [
        Example(image=torch.rand(3, 12, 16, generator=g), scene={"id": "r0"},
                objects=[{"category": "square", "box": [1.0, 2.0, 5.0, 8.0], "visible_fraction": 0.75},
                         {"category": "circle", "box": [3.0, 3.0, 3.0, 9.0]}]),  # empty box: left out
        Example(image=torch.rand(3, 10, 14, generator=g), scene={"id": "r1"}, objects=[]),
        Example(image=torch.rand(3, 12, 16, generator=g), scene={"id": "r2"},
                objects=[{"category": "triangle", "box": [0.0, 0.0, 16.0, 12.0]}]),
    ]
    path = write_coco(examples, tmp_path / "out", ["circle", "square", "triangle"])
    assert path == tmp_path / "out" / "annotations.json"

    coco = COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "square", "triangle"]
    assert coco.getCatIds() == [1, 2, 3] and sorted(coco.getImgIds()) == [1, 2, 3]
    (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert ann["bbox"] == [1.0, 2.0, 4.0, 6.0] and ann["area"] == 24.0 and ann["iscrowd"] == 0
    assert ann["category_id"] == 2

    loaded = load_coco(tmp_path / "out")
    assert len(loaded) == 3
    for original, back in zip(examples, loaded, strict=True):
        assert back.image.shape == original.image.shape
        assert torch.allclose(back.image, original.image, atol=0.5 / 255 + 1e-6)
    assert loaded[0].objects == [{"category": "square", "box": [1.0, 2.0, 5.0, 8.0], "visible_fraction": 0.75}]
    assert loaded[1].objects == []
    assert loaded[2].objects == [{"category": "triangle", "box": [0.0, 0.0, 16.0, 12.0]}]


def test_coco_boxes_outside_their_image_are_clipped_or_refused(tmp_path, caplog):
    png(tmp_path / "c.png", width=128, height=128)
    data = {"images": [{"id": 1, "file_name": "c.png", "width": 128, "height": 128}],
            "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [13, 97, 155, 21]}],
            "categories": [{"id": 1, "name": "cup"}]}
    write_json(tmp_path / "annotations.json", data)
    with caplog.at_level("WARNING", logger="autosim"):
        (example,) = load_coco(tmp_path)
    # x1 = 13 + 155 = 168 > 128: clipped there; y1 = 97 + 21 = 118 is inside.
    assert example.objects == [{"category": "cup", "box": [13.0, 97.0, 128.0, 118.0],
                                "clipped_from": [13.0, 97.0, 168.0, 118.0]}]
    assert any("1 box(es) reach outside their image" in r.getMessage() for r in caplog.records)

    data["annotations"] += [{"id": 6, "image_id": 1, "category_id": 1, "bbox": [130, 4, 10, 10]}]
    write_json(tmp_path / "annotations.json", data)
    with pytest.raises(DatasetError, match=r"annotations.json: annotation 6: box \[130.0, 4.0, 140.0, 14.0\] has no "
                                           r"area once clipped to the image"):
        load_coco(tmp_path)
    data["annotations"][1]["bbox"] = [3, 4, 0, 10]
    write_json(tmp_path / "annotations.json", data)
    with pytest.raises(DatasetError, match=r"annotation 6: box \[3.0, 4.0, 3.0, 14.0\] has no area"):
        load_coco(tmp_path)


def test_generated_folder_boxes_outside_their_image_are_refused_naming_the_line(tmp_path):
    root = tmp_path / "gen"
    write_examples([Example(image=torch.rand(3, 8, 8), objects=[{"category": "circle", "box": [9, 1, 12, 3]}])], root)
    with pytest.raises(DatasetError, match=r"annotations.jsonl:1: object 'circle': box .* has no area once clipped"):
        load_generated(root)


def test_write_coco_clips_boxes_to_the_image(tmp_path):
    example = Example(image=torch.zeros(3, 128, 128), scene={"id": "x"},
                      objects=[{"category": "cup", "box": [13.0, 97.0, 168.0, 118.0]}])
    data = json.loads(write_coco([example], tmp_path, ["cup"]).read_text())
    assert data["annotations"][0]["bbox"] == [13.0, 97.0, 115.0, 21.0]


def test_write_coco_rejects_unknown_category(tmp_path):
    example = Example(image=torch.zeros(3, 4, 4), scene={"id": "x"}, objects=[{"category": "cat", "box": [0, 0, 1, 1]}])
    with pytest.raises(ValueError, match=r"example 'x': object category 'cat' is not one of \['dog'\]"):
        write_coco([example], tmp_path, ["dog"])


# -- BOP ----------------------------------------------------------------------------------------

def bop_scene(folder, images):
    """``images``: {im_id: [(obj_id, bbox_visib, visib_fract), ...]}, written in BOP's layout."""
    gt, info, camera = {}, {}, {}
    for im_id, objects in images.items():
        png(folder / "rgb" / f"{im_id:06d}.png")
        gt[str(im_id)] = [{"cam_R_m2c": [1, 0, 0, 0, 1, 0, 0, 0, 1], "cam_t_m2c": [0, 0, 1000], "obj_id": o}
                          for o, _, _ in objects]
        info[str(im_id)] = [{"bbox_obj": box, "bbox_visib": box, "px_count_all": 100, "px_count_valid": 100,
                             "px_count_visib": round(100 * v), "visib_fract": v} for _, box, v in objects]
        camera[str(im_id)] = {"cam_K": [572.4, 0, 325.3, 0, 573.6, 242.0, 0, 0, 1], "depth_scale": 1.0}
    write_json(folder / "scene_gt.json", gt)
    write_json(folder / "scene_gt_info.json", info)
    write_json(folder / "scene_camera.json", camera)


def bop_split(root):
    """``root/lmo/test`` with scenes 000002 (two images) and 000003 (one image)."""
    split = root / "lmo" / "test"
    bop_scene(split / "000002", {
        3: [(1, [1, 2, 3, 4], 0.9), (5, [-1, -1, -1, -1], 0.0), (6, [4, 4, 8, 6], 0.05)],
        0: [(8, [0, 0, 16, 12], 1.0)],
    })
    bop_scene(split / "000003", {7: [(12, [2, 3, 1, 1], 0.5)]})
    return split


def test_bop_split(tmp_path):
    examples = load_bop(bop_split(tmp_path))
    assert [e.scene["id"] for e in examples] == ["000002/000000", "000002/000003", "000003/000007"]
    first, second, third = examples
    assert first.image.shape == (3, 12, 16)
    # The object with bbox_visib -1 (not visible at all) is left out; the barely visible one stays.
    assert second.objects == [
        {"category": "obj_000001", "box": [1.0, 2.0, 4.0, 6.0], "obj_id": 1, "visible_fraction": 0.9},
        {"category": "obj_000006", "box": [4.0, 4.0, 12.0, 10.0], "obj_id": 6, "visible_fraction": 0.05},
    ]
    assert second.scene["bop_scene_id"] == 2 and second.scene["bop_im_id"] == 3
    assert second.scene["cam_K"][0] == pytest.approx(572.4)
    assert third.objects[0]["category"] == "obj_000012"
    # The task's min_visible_fraction then drops the barely visible one, as BOP does.
    rows = object_rows(second.objects, ["obj_000001", "obj_000006"], 1.0, (0.0, 0.0), "x", min_visible_fraction=0.1)
    assert rows.tolist() == [[1.0, 2.0, 4.0, 6.0, 0.0]]


def test_bop_boxes_are_clipped_to_their_16_x_12_image(tmp_path):
    scene = tmp_path / "000004"
    bop_scene(scene, {1: [(1, [10, 8, 10, 10], 1.0)]})  # x1 = 20 > 16, y1 = 18 > 12
    (example,) = load_bop(scene)
    assert example.objects[0]["box"] == [10.0, 8.0, 16.0, 12.0]
    assert example.objects[0]["clipped_from"] == [10.0, 8.0, 20.0, 18.0]


def test_bop_names_limit_and_single_scene(tmp_path):
    split = bop_split(tmp_path)
    examples = load_bop(split, names={"1": "ape", 6: "cat"}, limit=2)
    assert [e.scene["id"] for e in examples] == ["000002/000000", "000002/000003"]
    assert [o["category"] for o in examples[1].objects] == ["ape", "cat"]
    assert examples[0].objects[0]["category"] == "obj_000008"
    (only,) = load_bop(split / "000003")
    assert only.scene["id"] == "000003/000007"
    with pytest.raises(ValueError, match=r"names must map BOP obj_ids \(integers\) to class names"):
        load_bop(split, names={"ape": "ape"})


def test_bop_test_targets(tmp_path):
    split = bop_split(tmp_path)
    targets = [{"im_id": 3, "inst_count": 1, "obj_id": 1, "scene_id": 2},
               {"im_id": 7, "inst_count": 1, "obj_id": 12, "scene_id": 3}]
    write_json(split.parent / "test_targets_bop19.json", targets)
    assert [e.scene["id"] for e in load_bop(split)] == ["000002/000003", "000003/000007"]
    assert len(load_bop(split, test_targets=False)) == 3
    assert [e.scene["id"] for e in load_bop(split / "000002")] == ["000002/000003"]
    write_json(tmp_path / "mine.json", targets[:1])
    assert [e.scene["id"] for e in load_bop(split, test_targets=tmp_path / "mine.json")] == ["000002/000003"]
    # A split not named test* is not filtered by default (BOP lists test images only).
    renamed = split.rename(split.parent / "val")
    assert len(load_bop(renamed)) == 3


def test_bop_errors(tmp_path):
    split = bop_split(tmp_path)
    with pytest.raises(DatasetError, match=r"test_targets_bop19.json: not found"):
        load_bop(split, test_targets=True)
    write_json(split.parent / "test_targets_bop19.json", [{"im_id": 1, "obj_id": 1, "inst_count": 1, "scene_id": 9}])
    with pytest.raises(DatasetError, match=r"none of its images is in the BOP target list"):
        load_bop(split)
    (split / "000003" / "rgb" / "000007.png").unlink()
    with pytest.raises(DatasetError, match=r"000003: image 000007 not found in rgb/ or gray/"):
        load_bop(split, test_targets=False)
    (split / "000002" / "scene_gt_info.json").unlink()
    with pytest.raises(DatasetError, match=r"000002/scene_gt_info.json: not found"):
        load_bop(split, test_targets=False)
    with pytest.raises(DatasetError, match=r"no BOP scene folders"):
        load_bop(tmp_path)


# -- autosim generate ---------------------------------------------------------------------------

def generated_folder(root):
    g = torch.Generator().manual_seed(1)
    examples = [Example(image=torch.rand(3, 12, 16, generator=g), scene={"id": 41, "seed": 7},
                        objects=[{"category": "circle", "box": [1, 1, 5, 5], "colour": "red"}]),
                Example(image=torch.rand(3, 12, 16, generator=g), scene=None, objects=[])]
    write_examples(examples, root)
    return examples


def test_generated_layout(tmp_path):
    original = generated_folder(tmp_path)
    loaded = load_generated(tmp_path)
    assert len(loaded) == 2
    assert torch.allclose(loaded[0].image, original[0].image, atol=0.5 / 255 + 1e-6)
    assert loaded[0].objects == [{"category": "circle", "box": [1.0, 1.0, 5.0, 5.0], "colour": "red"}]
    assert loaded[0].scene == {"id": 41, "seed": 7}
    assert loaded[1].scene == {"id": "000001.png"} and loaded[1].objects == []
    assert len(load_generated(tmp_path, limit=1)) == 1


def test_generated_errors(tmp_path):
    generated_folder(tmp_path)
    with (tmp_path / "annotations.jsonl").open("a") as f:
        f.write('{"image": "images/000002.png", "objects": [{"category": "circle"}]}\n')
    png(tmp_path / "images" / "000002.png")
    with pytest.raises(DatasetError, match=r"annotations.jsonl:3: object .* needs a 'category' and a 'box'"):
        load_generated(tmp_path)
    (tmp_path / "images" / "000001.png").unlink()
    with pytest.raises(DatasetError, match=r"annotations.jsonl:2: image .*000001.png not found"):
        load_generated(tmp_path)


# -- dispatch -----------------------------------------------------------------------------------

def test_dispatch_picks_the_layout(tmp_path):
    split = bop_split(tmp_path / "bop")
    coco = coco_folder(tmp_path / "coco")
    generated_folder(tmp_path / "gen")
    assert load_detection_folder(split)[0].scene["id"] == "000002/000000"
    assert load_detection_folder(split / "000003")[0].scene["id"] == "000003/000007"
    assert load_detection_folder(split, names={8: "can"}, limit=1)[0].objects[0]["category"] == "can"
    assert [e.scene["id"] for e in load_detection_folder(coco)] == ["a.png", "b.png", "empty.png"]
    assert len(load_detection_folder(coco / "annotations.json", limit=1)) == 1
    assert load_detection_folder(tmp_path / "gen")[0].scene["id"] == 41


def test_dispatch_errors(tmp_path):
    (tmp_path / "nothing" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"nothing: no detection dataset found; expected a COCO JSON"):
        load_detection_folder(tmp_path / "nothing")
    with pytest.raises(DatasetError, match=r"missing: no such file or folder"):
        load_detection_folder(tmp_path / "missing")
    bop_split(tmp_path / "bop")
    with pytest.raises(DatasetError, match=r"lmo: looks like a BOP dataset root; pass one split folder, e.g. .*test"):
        load_detection_folder(tmp_path / "bop" / "lmo")
    assert issubclass(DatasetError, ValueError)
