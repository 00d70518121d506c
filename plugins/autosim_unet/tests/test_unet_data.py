"""Folder datasets: write examples, read them back, and the errors users see."""

import sys

import numpy as np
import pytest
import torch
from autosim_core.export import write_examples
from autosim_core.records import Example
from PIL import Image

from autosim_unet.data import DatasetError, load_folder, load_pair
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
    loaded = UNetTask().load_dataset(path=str(tmp_path), mask=None, settings={"num_classes": 4})
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


# ------------------------------------------------------------- an image + mask pair, TIFF, 16 bit ---
def _pair(tmp_path, image: np.ndarray, mask: np.ndarray, suffix: str = ".png"):
    image_path, mask_path = tmp_path / f"img{suffix}", tmp_path / f"mask{suffix}"
    if suffix == ".png":
        Image.fromarray(image).save(image_path)
        Image.fromarray(mask).save(mask_path)
    else:
        tifffile = pytest.importorskip("tifffile")
        tifffile.imwrite(image_path, image)
        tifffile.imwrite(mask_path, mask)
    return image_path, mask_path


def _instances() -> np.ndarray:
    mask = np.zeros((6, 8), dtype=np.uint16)
    mask[1:3, 1:4] = 7          # object ids, not classes
    mask[4:6, 5:8] = 300
    return mask


def test_a_16_bit_pair_with_an_instance_mask_reads_as_grey_percentiles_and_one_class(tmp_path):
    image = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000)
    path, mask = _pair(tmp_path, image, _instances())
    loaded = UNetTask().load_dataset(path=str(path), mask=str(mask), settings={
        "num_classes": 2, "in_channels": 1, "intensity": "percentile", "masks": "instances"})
    [example] = loaded
    assert example.image.shape == (1, 6, 8) and example.image.dtype == torch.float32
    low, high = np.percentile(image.astype(np.float64), (1.0, 99.8))
    expected = np.clip((image - low) / (high - low), 0, 1)
    assert np.allclose(example.image[0].numpy(), expected, atol=1e-6)
    assert torch.equal(example.mask, torch.from_numpy((_instances() > 0).astype(np.int64)))
    dtype = UNetTask().load_dataset(path=str(path), mask=str(mask), settings={
        "num_classes": 2, "in_channels": 3, "masks": "instances"})[0]
    assert dtype.image.shape == (3, 6, 8) and torch.allclose(dtype.image[2], torch.from_numpy(image / 65535.0).float())


def test_a_tiff_pair_reads_as_its_png_twin(tmp_path):
    image = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 37)
    (tmp_path / "png").mkdir()
    (tmp_path / "tif").mkdir()
    png = load_pair(*_pair(tmp_path / "png", image, _instances()), 2, channels=1, masks="instances")
    tif = load_pair(*_pair(tmp_path / "tif", image, _instances(), ".tif"), 2, channels=1, masks="instances")
    assert torch.equal(png[0].image, tif[0].image) and torch.equal(png[0].mask, tif[0].mask)


def test_a_mask_of_object_ids_read_as_classes_says_so(tmp_path):
    path, mask = _pair(tmp_path, np.zeros((6, 8), dtype=np.uint8), _instances())
    with pytest.raises(DatasetError, match=r"class ids \[7, 300\] but num_classes = 2"):
        load_pair(path, mask, 2, channels=1)


def test_a_pair_of_two_shapes_or_a_missing_file_is_one_line(tmp_path):
    path, mask = _pair(tmp_path, np.zeros((6, 9), dtype=np.uint8), _instances())
    with pytest.raises(DatasetError) as err:
        load_pair(path, mask, 2, channels=1, masks="instances")
    assert str(err.value) == f"{mask}: mask is 8x6 but its image is 9x6 (width x height)"
    with pytest.raises(DatasetError, match=r"nothing\.png: file not found$"):
        load_pair(tmp_path / "nothing.png", mask, 2)


def test_a_tiff_without_tifffile_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "a.tif").write_bytes(b"II*\x00")
    monkeypatch.setitem(sys.modules, "tifffile", None)      # import tifffile now raises ImportError
    with pytest.raises(DatasetError, match=r"a\.tif: reading TIFF files needs tifffile \(pip install tifffile\)$"):
        load_pair(tmp_path / "a.tif", tmp_path / "a.tif", 2)
