"""Folder datasets: write examples, read them back, and the errors users see."""

import numpy as np
import pytest
import torch
from autosim_core.export import write_examples
from autosim_core.records import Example
from PIL import Image

from autosim_unet.data import DatasetError, load_folder
from autosim_unet.plugin import UNetTask


def examples(n=3, h=5, w=7):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        image = torch.randint(0, 256, (3, h, w), generator=g).float() / 255.0
        mask = torch.randint(0, 4, (h, w), generator=g)
        out.append(Example(image=image, mask=mask, scene={"id": f"val-{i}"}))
    return out


def test_round_trip(tmp_path):
    original = examples()
    assert write_examples(original, tmp_path) == 3
    loaded = UNetTask().load_dataset(path=str(tmp_path), settings={"num_classes": 4})
    assert [e.scene["id"] for e in loaded] == ["000000", "000001", "000002"]
    for a, b in zip(original, loaded, strict=True):
        assert b.image.shape == (3, 5, 7) and b.image.dtype == torch.float32
        assert torch.allclose(a.image, b.image, atol=0.5 / 255)
        assert torch.equal(a.mask, b.mask) and b.mask.dtype == torch.int64
    batch = UNetTask().collate(examples=loaded, settings={})
    assert batch.inputs.shape == (3, 3, 5, 7) and batch.targets.shape == (3, 5, 7)


def test_files_are_standard_pngs(tmp_path):
    write_examples(examples(1), tmp_path)
    with Image.open(tmp_path / "images" / "000000.png") as im:
        assert im.mode == "RGB" and im.size == (7, 5)
    with Image.open(tmp_path / "masks" / "000000.png") as im:
        assert im.mode == "L"


def test_missing_mask_is_named(tmp_path):
    write_examples(examples(), tmp_path)
    (tmp_path / "masks" / "000001.png").unlink()
    with pytest.raises(DatasetError, match=r"images without a mask.*000001"):
        load_folder(tmp_path, 4)


def test_missing_folder(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="masks: folder not found"):
        load_folder(tmp_path, 4)


def test_size_mismatch(tmp_path):
    write_examples(examples(), tmp_path)
    Image.fromarray(np.zeros((4, 7), np.uint8)).save(tmp_path / "masks" / "000002.png")
    with pytest.raises(DatasetError, match=r"000002.png: mask is 7x4 but its image is 7x5"):
        load_folder(tmp_path, 4)


def test_class_id_out_of_range(tmp_path):
    write_examples(examples(), tmp_path)
    with pytest.raises(DatasetError, match=r"class ids \[3\] but num_classes = 3"):
        load_folder(tmp_path, 3)


def test_ignore_index_is_allowed(tmp_path):
    ex = examples(1)[0]
    ex.mask[0, 0] = 255
    write_examples([ex], tmp_path)
    assert int(load_folder(tmp_path, 4, ignore_index=255)[0].mask[0, 0]) == 255
    with pytest.raises(DatasetError, match="ignore_index"):
        load_folder(tmp_path, 4)


def test_colour_mask_rejected(tmp_path):
    write_examples(examples(1), tmp_path)
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "masks" / "000000.png")
    with pytest.raises(DatasetError, match="single-channel"):
        load_folder(tmp_path, 4)


def test_collate_scales_uint8_and_rejects_mixed_sizes():
    task = UNetTask()
    a = Example(image=torch.full((3, 4, 4), 255, dtype=torch.uint8), mask=torch.zeros(4, 4, dtype=torch.int64))
    batch = task.collate(examples=[a, a], settings={})
    assert batch.inputs.dtype == torch.float32 and float(batch.inputs.max()) == 1.0
    b = Example(image=torch.rand(3, 5, 4), mask=torch.zeros(5, 4, dtype=torch.int64), scene={"id": "odd"})
    with pytest.raises(ValueError, match=r"'odd'.*one size"):
        task.collate(examples=[a, b], settings={})
    with pytest.raises(ValueError, match="no mask"):
        task.collate(examples=[Example(image=torch.rand(3, 4, 4))], settings={})
