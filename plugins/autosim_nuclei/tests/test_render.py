"""The renders: masks mark exactly the drawn nuclei, a record renders to the same tile, and each knob
moves the statistic it names."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from autosim_core.instances import boundary_classes

from autosim_nuclei.hooks import nuclei_simulator
from autosim_nuclei.params import NucleiSettings
from autosim_nuclei.render import draw_tile

SETTINGS = NucleiSettings()
QUIET = {"blur": 0.0, "photons": 1e9, "read_noise": 0.0, "texture": 0.0, "gradient": 0.0, "levels": 65535.0}
"""No blur, noise, texture, gradient or coarse digitisation: the tile is background plus a flat level per nucleus."""


def scenes(n: int, seed: int = 0, **fixed: Any) -> list[dict[str, Any]]:
    """``n`` records drawn from the ``initial`` preset, with the keys of ``fixed`` set."""
    space = nuclei_simulator.parameter_space(SETTINGS)
    records = space.records(space.sample(space.init_psi(), n, torch.Generator().manual_seed(seed)))
    return [{**r, **fixed, "seed": seed * 1000 + i, "id": i} for i, r in enumerate(records)]


def test_the_mask_marks_exactly_the_pixels_the_nuclei_brighten() -> None:
    for scene in scenes(12, **QUIET, brightness_spread=0.0):
        tile = draw_tile(scene, SETTINGS)
        example = nuclei_simulator.render([scene], SETTINGS)[0]
        lifted = tile.image - scene["background"]
        assert torch.equal(example.mask, (lifted > 1e-3).long())   # 1e-3: float32 rounding of 1e9 photons
        assert torch.equal(example.mask, (tile.instances > 0).long())
        if example.mask.any():   # every nucleus at the one level the scene names
            assert torch.allclose(lifted[example.mask > 0], torch.tensor(scene["brightness"]), atol=1e-3)


def test_an_unclipped_nucleus_has_the_area_of_its_radius() -> None:
    # One nucleus of radius 10 in the middle of the tile (placement may put it near an edge: several seeds).
    areas = []
    for seed in range(20):
        scene = {**scenes(1, seed, **QUIET)[0], "count": 1, "radius": 10.0, "radius_spread": 0.0, "elongation": 2.0}
        instances = draw_tile(scene, SETTINGS).instances
        ys, xs = torch.nonzero(instances == 1, as_tuple=True)
        if len(ys) and ys.min() > 0 and xs.min() > 0 and ys.max() < 63 and xs.max() < 63:
            areas.append(len(ys))
    assert len(areas) >= 5
    assert all(abs(a - torch.pi * 100) < 0.06 * torch.pi * 100 for a in areas), areas


def test_the_same_record_renders_the_same_tile() -> None:
    scene = scenes(1)[0]
    a, b = (nuclei_simulator.render([scene], SETTINGS)[0] for _ in range(2))
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    other = nuclei_simulator.render([{**scene, "seed": scene["seed"] + 1}], SETTINGS)[0]
    assert not torch.equal(a.image, other.image)


def _objects(tile) -> torch.Tensor:
    return tile.instances.unique()[1:]


def _mean_area(tiles) -> float:
    areas = [int((t.instances == k).sum()) for t in tiles for k in _objects(t)]
    return sum(areas) / len(areas)


def _elongation(tiles) -> float:
    """Mean ratio of the principal axes from each nucleus's second moments."""
    ratios = []
    for t in tiles:
        for k in _objects(t):
            ys, xs = torch.nonzero(t.instances == k, as_tuple=True)
            if len(ys) < 30:
                continue
            cov = torch.cov(torch.stack([xs.float(), ys.float()]))
            low, high = torch.linalg.eigvalsh(cov)
            ratios.append(float((high / low.clamp_min(1e-6)).sqrt()))
    return sum(ratios) / len(ratios)


def _axes(tiles) -> list[float]:
    """Each unclipped nucleus's major-axis angle in radians in [0, pi), from its second moments."""
    angles = []
    for t in tiles:
        for k in _objects(t):
            ys, xs = torch.nonzero(t.instances == k, as_tuple=True)
            if len(ys) < 30 or ys.min() == 0 or xs.min() == 0 or ys.max() == t.instances.shape[0] - 1 \
                    or xs.max() == t.instances.shape[1] - 1:
                continue
            _, vectors = torch.linalg.eigh(torch.cov(torch.stack([xs.float(), ys.float()])))
            vx, vy = vectors[:, 1].tolist()
            angles.append(float(torch.atan2(torch.tensor(vy), torch.tensor(vx))) % torch.pi)
    return angles


def _alignment(tiles) -> float:
    """Length of the mean of exp(2i angle) over the nuclei: 1 when all lie along one axis, ~0 when isotropic."""
    angles = torch.tensor(_axes(tiles))
    return float(torch.complex(torch.cos(2 * angles), torch.sin(2 * angles)).mean().abs())


def _grey_levels(tiles) -> float:
    return float(sum(len(t.image.unique()) for t in tiles) / len(tiles))


def _foreground(tiles) -> float:
    return float(torch.cat([t.image[t.instances > 0] for t in tiles]).mean())


def _background(tiles) -> float:
    return float(torch.cat([t.image[t.instances == 0] for t in tiles]).mean())


def _background_std(tiles) -> float:
    return float(torch.stack([t.image[t.instances == 0].std() for t in tiles]).mean())


def _texture(tiles) -> float:
    return float(torch.stack([t.clean[t.instances == k].std() for t in tiles for k in _objects(t)]).mean())


def _sharpness(tiles) -> float:
    return float(torch.stack([(t.image[:, 1:] - t.image[:, :-1]).abs().mean() for t in tiles]).mean())


def _gradient(tiles) -> float:
    """The background's spread across the tile, measured on the noise-free image."""
    return float(torch.stack([t.clean[t.instances == 0].std() for t in tiles if (t.instances == 0).sum() > 100]).mean())


def _brightness_spread(tiles) -> float:
    levels = torch.tensor([float(t.clean[t.instances == k].mean()) for t in tiles for k in _objects(t)])
    return float(levels.log().std())


KNOBS = [  # knob, low, high, statistic, (extra fixed keys)
    ("count", 2.0, 10.0, lambda ts: sum(len(_objects(t)) for t in ts) / len(ts), {}),
    ("radius", 5.0, 10.0, _mean_area, {"radius_spread": 0.0}),
    ("elongation", 1.0, 2.5, _elongation, {"radius": 9.0}),
    ("brightness", 0.2, 0.6, _foreground, {"blur": 0.0}),
    ("background", 0.02, 0.3, _background, {"blur": 0.0}),
    ("texture", 0.0, 0.6, _texture, {}),
    ("brightness_spread", 0.0, 0.6, _brightness_spread, {"texture": 0.0}),
    ("gradient", 0.0, 0.25, _gradient, {}),
    ("blur", 0.0, 3.0, lambda ts: -_sharpness(ts), {}),
    ("photons", 20.0, 2000.0, lambda ts: -_background_std(ts), {"read_noise": 0.0, "gradient": 0.0}),
    ("read_noise", 0.0, 0.1, _background_std, {"photons": 1e9, "gradient": 0.0}),
    ("orientation_spread", 1.0, 0.0, _alignment, {"elongation": 2.0, "radius": 9.0}),
    ("levels", 16.0, 2000.0, _grey_levels, {}),
]


@pytest.mark.parametrize(("knob", "low", "high", "statistic", "fixed"), KNOBS, ids=[k[0] for k in KNOBS])
def test_each_knob_moves_the_statistic_it_names(knob, low, high, statistic, fixed) -> None:
    def measure(value: float) -> float:
        return statistic([draw_tile(s, SETTINGS) for s in scenes(16, seed=3, **{**fixed, knob: value})])

    assert measure(high) > measure(low)


def test_aligned_nuclei_lie_along_the_orientation() -> None:
    for degrees in (20.0, 75.0, 150.0):
        # One nucleus per tile: none cut by another.
        tiles = [draw_tile(s, SETTINGS) for s in scenes(40, seed=4, orientation=degrees, orientation_spread=0.0,
                                                            count=1.0, elongation=2.5, radius=9.0, radius_spread=0.0)]
        angles = torch.tensor(_axes(tiles))
        assert len(angles) >= 10
        # Distance on the half circle of axes, in degrees: a pixelised ellipse of 9 px is off by a few.
        off = torch.rad2deg(torch.remainder(angles - torch.deg2rad(torch.tensor(degrees)) + torch.pi / 2, torch.pi)
                            - torch.pi / 2).abs()
        assert float(off.max()) < 6.0, (degrees, off.tolist())


def test_a_tile_is_digitised_to_its_grey_levels() -> None:
    for levels in (20.0, 255.0):
        image = draw_tile(scenes(1, seed=6, levels=levels)[0], SETTINGS).image
        steps = image * levels
        assert torch.allclose(steps, steps.round(), atol=1e-3)
        assert len(image.unique()) <= levels + 1


def test_the_boundary_labels_part_touching_nuclei() -> None:
    settings = NucleiSettings(boundary=True)
    assert nuclei_simulator.labels(settings) == ["nucleus", "boundary"]
    parted = 0
    for scene in scenes(12, seed=8, count=12.0, radius=7.0):
        tile = draw_tile(scene, settings)
        example = nuclei_simulator.render([scene], settings)[0]
        assert torch.equal(example.mask, boundary_classes(tile.instances))
        assert torch.equal(example.mask > 0, tile.instances > 0)
        # Every drawn nucleus keeps an interior, and no interior pixel touches another nucleus's interior.
        interior = torch.where(example.mask == 1, tile.instances, torch.zeros_like(tile.instances))
        assert set(interior.unique().tolist()) - {0} == set(tile.instances.unique().tolist()) - {0}
        right = (interior[:, 1:] > 0) & (interior[:, :-1] > 0)
        down = (interior[1:, :] > 0) & (interior[:-1, :] > 0)
        assert torch.equal(interior[:, 1:][right], interior[:, :-1][right])
        assert torch.equal(interior[1:, :][down], interior[:-1, :][down])
        touching = (tile.instances[:, 1:] != tile.instances[:, :-1]) & (tile.instances[:, 1:] > 0) \
            & (tile.instances[:, :-1] > 0)
        parted += int(touching.any())
    assert parted >= 3   # the test sees touching nuclei, not only isolated ones


def test_radius_sets_the_mean_area_as_its_square() -> None:
    tiles = {r: [draw_tile(s, SETTINGS) for s in scenes(24, seed=5, radius=r, radius_spread=0.0, elongation=1.0)]
             for r in (5.0, 10.0)}
    # Nuclei cut by the tile's edge and overlaps shrink the areas a little, about equally for both.
    assert 3.0 < _mean_area(tiles[10.0]) / _mean_area(tiles[5.0]) < 4.6


def test_the_presets_are_valid_spaces_and_wide_is_broader() -> None:
    space = nuclei_simulator.parameter_space(SETTINGS)
    presets = nuclei_simulator.presets(SETTINGS)
    assert set(presets) == {"initial", "wide"}
    wide = space.override(presets["wide"])
    for name, family in wide.parameters.items():
        assert family.std >= space.parameters[name].std, name
    assert nuclei_simulator.labels(SETTINGS) == ["nucleus"]
