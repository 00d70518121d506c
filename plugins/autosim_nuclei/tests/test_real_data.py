"""The real image of the stardist wheel as validation and test tiles through the core's data path, with
the UNet task reading it: its left and right halves share no pixel, and what a user gets wrong is one line."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest
import torch
from autosim_core.config import ConfigError
from autosim_core.run import open_run

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "nuclei_unet.toml"
real = pytest.mark.skipif(importlib.util.find_spec("stardist") is None or importlib.util.find_spec("tifffile") is None,
                          reason="the real image needs: pip install --no-deps stardist tifffile")


def example(**changes) -> dict:
    data = tomllib.loads(EXAMPLE.read_text())
    data["budget"] = {"iterations": 1}
    data["searcher"]["settings"] = {"scenes_per_iteration": 4}
    data["training"]["epochs"] = 1
    for key, value in changes.items():
        data[key] = {**data[key], **value}
    return data


@real
def test_the_halves_of_the_real_image_are_32_tiles_each_sharing_no_pixel(tmp_path) -> None:
    run = open_run(example(), tmp_path / "run")
    val, test = run.load_data("validation"), run.load_data("test")
    assert val.inputs.shape == test.inputs.shape == (32, 1, 64, 64)
    assert set(val.targets.unique().tolist()) == set(test.targets.unique().tolist()) == {0, 1}
    # The tiles put back together are the image's halves, percentile-normalised, and its nuclei.
    import numpy as np
    import tifffile

    folder = Path(importlib.util.find_spec("stardist").submodule_search_locations[0]) / "data" / "images"
    image = tifffile.imread(folder / "img2d.tif").astype(np.float64)
    low, high = np.percentile(image, (1.0, 99.8))
    normalised = torch.from_numpy(np.clip((image - low) / (high - low), 0, 1)).float()
    nuclei = torch.from_numpy(tifffile.imread(folder / "mask2d.tif").astype(np.int64) > 0).long()
    for batch, offset in ((val, 0), (test, 256)):
        mosaic = batch.inputs[:, 0].reshape(8, 4, 64, 64).permute(0, 2, 1, 3).reshape(512, 256)
        masks = batch.targets.reshape(8, 4, 64, 64).permute(0, 2, 1, 3).reshape(512, 256)
        assert torch.allclose(mosaic, normalised[:, offset:offset + 256], atol=1e-5)
        assert torch.equal(masks, nuclei[:, offset:offset + 256])


@real
def test_the_boundary_reading_of_the_real_mask_is_the_renders_rule_on_the_whole_image(tmp_path) -> None:
    import numpy as np
    import tifffile
    from autosim_core.instances import boundary_classes

    data = example(task={"settings": {**tomllib.loads(EXAMPLE.read_text())["task"]["settings"], "num_classes": 3,
                                      "masks": "boundaries", "class_weights": [0.5, 1.0, 1.0]}},
                   simulator={"settings": {"size": 64, "boundary": True}})
    run = open_run(data, tmp_path / "run")
    val = run.load_data("validation")
    folder = Path(importlib.util.find_spec("stardist").submodule_search_locations[0]) / "data" / "images"
    # Outlines are taken on the whole image, before it is cut: a nucleus cut by a tile's edge keeps its outline.
    expected = boundary_classes(torch.from_numpy(tifffile.imread(folder / "mask2d.tif").astype(np.int64)))
    masks = val.targets.reshape(8, 4, 64, 64).permute(0, 2, 1, 3).reshape(512, 256)
    assert torch.equal(masks, expected[:, :256])
    assert set(masks.unique().tolist()) == {0, 1, 2}


@real
def test_one_iteration_on_the_real_validation_tiles_runs(tmp_path) -> None:
    run = open_run(example(), tmp_path / "run")
    summary = run.execute()
    assert summary["iterations"] == 1
    assert 0.0 <= summary["test"]["metric"] <= 1.0


def test_overlapping_halves_and_wrong_paths_are_one_line_each(tmp_path) -> None:
    image = tmp_path / "img.png"
    image.write_bytes(b"")
    data = example(validation={"path": str(image), "mask": str(tmp_path / "missing.png"),
                               "tiles": {"size": 64, "region": [0.0, 0.0, 0.6, 1.0]}},
                   test={"path": str(image), "mask": str(tmp_path / "missing.png")})
    with pytest.raises(ConfigError) as err:
        open_run(data, tmp_path / "run")
    lines = err.value.lines
    assert f"validation.mask: {str(tmp_path / 'missing.png')!r} is not a file" in lines
    assert f"test.mask: {str(tmp_path / 'missing.png')!r} is not a file" in lines
    assert any(line.startswith("test.tiles.region: [0.5, 0.0, 1.0, 1.0] overlaps validation's [0.0, 0.0, 0.6, 1.0]")
               for line in lines), lines
    data = example(validation={"path": str(tmp_path)}, test={"path": str(tmp_path / "nowhere")})
    data["validation"].pop("mask")
    data["test"].pop("mask")
    with pytest.raises(ConfigError) as err:
        open_run(data, tmp_path / "run")
    assert f"test.path: {str(tmp_path / 'nowhere')!r} is not a folder (an image file needs its mask)" in err.value.lines
