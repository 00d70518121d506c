"""Real images cut into tiles: the tiles cover their region, sets from disjoint regions share no pixel,
and what cannot be tiled is one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autosim_core.config import ConfigError, Tiles, parse_config
from autosim_core.records import Example
from autosim_core.tiles import cut_tiles, tile_corners


def _covered(tiles: Tiles, width: int, height: int) -> torch.Tensor:
    """How many tiles cover each pixel, counted by brute force."""
    count = torch.zeros(height, width, dtype=torch.long)
    for x, y in tile_corners(tiles, width, height):
        count[y:y + tiles.size, x:x + tiles.size] += 1
    return count


def test_touching_tiles_cover_the_left_half_once_and_nothing_else() -> None:
    left = Tiles(size=64, region=(0.0, 0.0, 0.5, 1.0))
    count = _covered(left, 512, 512)
    assert torch.equal(count[:, :256], torch.ones(512, 256, dtype=torch.long))
    assert int(count[:, 256:].sum()) == 0
    assert len(tile_corners(left, 512, 512)) == 4 * 8


def test_validation_and_test_halves_share_no_pixel_even_with_overlapping_strides() -> None:
    left = Tiles(size=64, stride=32, region=(0.0, 0.0, 0.5, 1.0))
    right = Tiles(size=64, stride=32, region=(0.5, 0.0, 1.0, 1.0))
    a, b = _covered(left, 500, 300), _covered(right, 500, 300)
    assert int(((a > 0) & (b > 0)).sum()) == 0
    assert int(a.max()) == 4      # within one set, tiles at half their size overlap (2 x 2)
    # Every pixel of a region is covered but a strip narrower than a stride at its far edges.
    assert bool((a[:288, :224] > 0).all()) and bool((b[:288, 250:474] > 0).all())


def test_cut_tiles_are_the_windows_of_image_and_mask() -> None:
    image = torch.arange(3 * 8 * 12, dtype=torch.float32).reshape(3, 8, 12)
    mask = torch.arange(8 * 12).reshape(8, 12)
    tiles = cut_tiles([Example(image=image, mask=mask, scene={"id": "a"})], Tiles(size=4, region=(0.5, 0, 1, 1)),
                      "test")
    assert [t.scene["id"] for t in tiles] == ["a@6,0", "a@6,4"]
    assert torch.equal(tiles[1].image, image[:, 4:8, 6:10]) and torch.equal(tiles[1].mask, mask[4:8, 6:10])


def test_what_cannot_be_tiled_is_one_line() -> None:
    image, mask = torch.zeros(1, 8, 8), torch.zeros(8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^validation\.tiles: no 16 px tile fits the region") as err:
        cut_tiles([Example(image=image, mask=mask, scene={"id": "a"})], Tiles(size=16), "validation")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="not an image with a label mask"):
        cut_tiles([Example(image=image)], Tiles(size=4), "test")


def test_a_region_outside_the_image_or_tiles_of_a_rendered_set_are_config_errors() -> None:
    base = {"simulator": {"name": "toy"}, "task": {"name": "toy"}, "budget": {"iterations": 1}}
    with pytest.raises(ConfigError, match=r"region: \[left, top, right, bottom\]"):
        parse_config({**base, "test": {"source": "folder", "path": "x",
                                       "tiles": {"size": 8, "region": [0.5, 0, 0.4, 1]}}})
    with pytest.raises(ConfigError, match="mask and tiles are for source = 'folder'"):
        parse_config({**base, "test": {"seed": 3, "tiles": {"size": 8}}})


def test_a_file_of_a_package_that_is_not_installed_is_one_line_saying_what_to_install() -> None:
    base = {"simulator": {"name": "toy"}, "task": {"name": "toy"}, "budget": {"iterations": 1}}
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "test": {"source": "folder", "path": "package:no_such_package_here/data/a.tif",
                                       "mask": "package:no_such_package_here/data/b.tif"}})
    assert err.value.lines == [
        "test.path: package 'no_such_package_here' is not installed; its files are read from it "
        "(pip install --no-deps no_such_package_here)",
        "test.mask: package 'no_such_package_here' is not installed; its files are read from it "
        "(pip install --no-deps no_such_package_here)"]


def test_a_file_of_an_installed_package_is_found_without_importing_it() -> None:

    import pydantic

    config = parse_config({"simulator": {"name": "toy"}, "task": {"name": "toy"}, "budget": {"iterations": 1},
                           "test": {"source": "folder", "path": "package:pydantic/main.py", "mask": "x.png"}})
    assert config.test is not None and config.test.path == Path(pydantic.__file__).parent / "main.py"
