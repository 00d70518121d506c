"""The ``shapes`` simulator: determinism, boxes and visibility against the mask, presets in a core run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from autosim_core.config import ConfigError, parse_config
from autosim_core.estimators import linear_plugin
from autosim_core.hookspecs import hookimpl
from autosim_core.plugins import GROUPS, Registry
from autosim_core.records import Batch, Example
from autosim_core.run import Run
from autosim_core.searchers import AutoSimulate
from autosim_core.space import ParameterSpace
from pydantic import ValidationError

from autosim_yolo.settings import SHAPE_CLASSES
from autosim_yolo.shapes import (
    BACKGROUNDS,
    MAX_OBJECTS,
    ShapesSettings,
    shapes_presets,
    shapes_simulator,
    shapes_space,
)

SIZE = 96


def _record(seed: int, **values: Any) -> dict[str, Any]:
    """A target-like record with three objects, one of each class, so the class mask tells them apart."""
    record: dict[str, Any] = {
        "id": f"scene-{seed}", "seed": seed, "n_objects": 3,
        "shape": ["circle", "square", "triangle"] + ["circle"] * (MAX_OBJECTS - 3),
        "size": [0.35, 0.3, 0.4] + [0.1] * (MAX_OBJECTS - 3),
        "saturation": 0.8, "light": 1.0, "background": BACKGROUNDS[seed % len(BACKGROUNDS)],
        "texture_contrast": 0.5, "background_brightness": 0.5, "noise": 0.03,
    }
    record.update(values)
    return record


def _render(records: list[dict[str, Any]], size: int = SIZE) -> list[Example]:
    return shapes_simulator.render(records, {"image_size": size})


def _sampled(preset: str, n: int, seed: int) -> list[dict[str, Any]]:
    space = shapes_space().override(shapes_presets()[preset])
    gen = torch.Generator().manual_seed(seed)
    records = space.records(space.sample(space.init_psi(), n, gen))
    for i, rec in enumerate(records):
        rec["id"], rec["seed"] = f"{preset}-{i}", 1000 * seed + i
    return records


def _mask_box(mask: torch.Tensor, class_id: int) -> list[float] | None:
    ys, xs = torch.nonzero(mask == class_id, as_tuple=True)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]


# ----------------------------------------------------------------------------- rendering ---
def test_same_record_renders_the_same_example_and_the_seed_matters() -> None:
    records = _sampled("target", 4, 0)
    first = _render([dict(r) for r in records])
    second = _render([dict(r) for r in records])
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
        assert a.objects == b.objects
    reseeded = _render([{**records[0], "seed": records[0]["seed"] + 1}])[0]
    assert not torch.equal(first[0].image, reseeded.image)


def test_examples_have_the_documented_form() -> None:
    records = _sampled("target", 6, 1)
    examples = _render(records, size=64)
    for ex, rec in zip(examples, records, strict=True):
        assert ex.scene is rec
        assert ex.image.shape == (3, 64, 64) and ex.image.dtype == torch.float32
        assert float(ex.image.min()) >= 0 and float(ex.image.max()) <= 1
        assert ex.mask is not None and ex.mask.shape == (64, 64) and ex.mask.dtype == torch.int64
        assert set(ex.mask.unique().tolist()) <= {0, 1, 2, 3}
        assert 1 <= len(ex.objects) <= rec["n_objects"]
        for obj in ex.objects:
            assert obj["category"] in SHAPE_CLASSES
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert 0 < obj["visible_fraction"] <= 1
            assert len(obj["colour"]) == 3


@pytest.mark.parametrize("seed", range(8))
def test_boxes_are_the_bounding_boxes_of_the_mask_pixels(seed: int) -> None:
    ex = _render([_record(seed)])[0]
    assert ex.mask is not None
    shown = {obj["category"]: obj["box"] for obj in ex.objects}
    assert len(shown) == len(ex.objects)
    for name in SHAPE_CLASSES:
        assert shown.get(name) == _mask_box(ex.mask, SHAPE_CLASSES.index(name) + 1), name


def test_visible_fraction_matches_an_unoccluded_rerender() -> None:
    # Object i is drawn last, hence whole, when the record stops at i + 1 objects: object
    # slots keep their places whatever n_objects is.
    occluded = 0
    for seed in range(12):
        record = _record(seed)
        full = _render([record])[0]
        assert full.mask is not None
        fractions = {obj["category"]: obj["visible_fraction"] for obj in full.objects}
        for i, name in enumerate(record["shape"][:3]):
            class_id = SHAPE_CLASSES.index(name) + 1
            alone = _render([{**record, "n_objects": i + 1}])[0]
            assert alone.mask is not None
            whole = int((alone.mask == class_id).sum())
            visible = int((full.mask == class_id).sum())
            assert whole > 0
            if visible == 0:
                assert name not in fractions
                continue
            assert fractions[name] == pytest.approx(visible / whole, abs=1e-12)
            occluded += fractions[name] < 1
        assert fractions[record["shape"][2]] == 1.0  # drawn last, nothing covers it
    assert occluded >= 3, "large overlapping objects must occlude each other in some scenes"


def test_fully_hidden_objects_are_left_out() -> None:
    hidden = 0
    for seed in range(300):
        record = _record(seed, n_objects=2, shape=["circle", "square"] + ["circle"] * (MAX_OBJECTS - 2),
                         size=[0.08, 0.6] + [0.1] * (MAX_OBJECTS - 2))
        ex = _render([record], size=48)[0]
        assert ex.mask is not None
        if not bool((ex.mask == SHAPE_CLASSES.index("circle") + 1).any()):
            assert [obj["category"] for obj in ex.objects] == ["square"]
            hidden += 1
    assert hidden > 0


def test_zero_objects_give_an_empty_scene() -> None:
    ex = _render([_record(3, n_objects=0)])[0]
    assert ex.objects == [] and ex.mask is not None and not bool(ex.mask.any())


@pytest.mark.parametrize(("change", "message"), [
    ({"n_objects": MAX_OBJECTS + 1}, "n_objects"),
    ({"n_objects": 2.5}, "n_objects"),
    ({"shape": ["hexagon"] * MAX_OBJECTS}, "hexagon"),
    ({"size": [0.2, -0.1, 0.2]}, "size"),
    ({"size": [0.2]}, "size"),
    ({"background": "marble"}, "marble"),
    ({"saturation": math.nan}, "saturation"),
    ({"noise": "loud"}, "noise"),
    ({"light": None}, "light"),
])
def test_invalid_records_name_their_scene(change: dict[str, Any], message: str) -> None:
    record = _record(0, **change)
    record["id"] = "validation-7"
    with pytest.raises(ValueError, match=f"'validation-7'.*{message}"):
        _render([record])


def test_a_missing_value_names_the_scene() -> None:
    record = _record(0)
    del record["texture_contrast"]
    with pytest.raises(ValueError, match=r"scene-0.*texture_contrast"):
        _render([record])


# ------------------------------------------------------------------- space and presets ---
def test_space_has_a_few_learnable_knobs_and_per_object_repeats() -> None:
    space = shapes_space()
    learnable = [name for name in space if space[name].learn]
    assert 5 <= len(learnable) <= 8
    assert space["shape"].repeat == space["size"].repeat == MAX_OBJECTS
    assert space["shape"].choices == SHAPE_CLASSES  # type: ignore[attr-defined]
    default, initial = space.to_dict(), space.override(shapes_presets()["initial"]).to_dict()
    assert default == initial


def test_initial_and_target_differ_visibly() -> None:
    def stats(preset: str) -> dict[str, float]:
        examples = _render(_sampled(preset, 40, 2), size=128)
        sides = [math.sqrt((b[2] - b[0]) * (b[3] - b[1])) / 128 for ex in examples for b in
                 (obj["box"] for obj in ex.objects)]
        background = [ex.image[:, ex.mask == 0] for ex in examples if ex.mask is not None]
        return {"side": sum(sides) / len(sides),
                "objects": sum(len(ex.objects) for ex in examples) / len(examples),
                "bg_std": float(torch.stack([b.std() for b in background]).mean()),
                "bg_mean": float(torch.stack([b.mean() for b in background]).mean())}

    initial, target = stats("initial"), stats("target")
    # Measured over these scenes: sides 0.08 vs 0.23, objects 1.7 vs 3.6, background std 0.015 vs
    # 0.15 and mean 0.10 vs 0.50; the margins leave room for other seeds.
    assert target["side"] > 2 * initial["side"]
    assert target["objects"] > initial["objects"] + 1
    assert target["bg_std"] > initial["bg_std"] + 0.08
    assert target["bg_mean"] > initial["bg_mean"] + 0.25


# ------------------------------------------------------------------------ core machinery ---
class _BoxCounter:
    """The smallest task a run accepts: it predicts how many objects an image holds."""

    @hookimpl
    def create_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1))

    @hookimpl
    def collate(self, examples: list[Example]) -> Batch:
        return Batch(torch.stack([e.image for e in examples]),
                     torch.tensor([float(len(e.objects)) for e in examples]))

    @hookimpl
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs[:, 0] - targets) ** 2

    @hookimpl
    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"metric": -float(((outputs[:, 0] - targets) ** 2).mean())}


def _run(tmp_path: Path, **simulator: Any) -> Run:
    plugins: dict[str, dict[str, Any]] = {k: {} for k in GROUPS}
    plugins["simulators"]["shapes"] = shapes_simulator
    plugins["tasks"]["box-counter"] = _BoxCounter()
    plugins["estimators"]["linear"] = linear_plugin
    plugins["searchers"]["autosimulate"] = AutoSimulate
    config = parse_config({
        "seed": 0,
        "simulator": {"name": "shapes", "start": "initial", "settings": {"image_size": 48}, **simulator},
        "task": {"name": "box-counter"},
        "estimator": {"name": "linear"},
        "budget": {"iterations": 1},
        "validation": {"preset": "target", "count": 6, "seed": 1},
        "cache_dir": str(tmp_path / "cache"),
    })
    return Run(config, tmp_path / "run", registry=Registry(plugins=plugins))


def test_presets_load_in_a_core_run_and_render_from_q_psi(tmp_path: Path) -> None:
    run = _run(tmp_path)
    assert set(run.presets) == {"initial", "target"}
    assert isinstance(run.space, ParameterSpace)
    assert run.space.to_dict() == shapes_space().to_dict()
    target = run.base_space.override(run.presets["target"])
    assert target.describe(target.init_psi())["size"]["median"] == pytest.approx(0.2)

    psi = run.space.init_psi()
    scenes, examples = run.render(run.space, psi, 5, torch.Generator().manual_seed(3), ids=list(range(5)))
    assert [rec["id"] for rec in scenes.records] == list(range(5))
    assert all(ex.image.shape == (3, 48, 48) for ex in examples)
    log_q = run.log_prob(psi, scenes)
    assert log_q.shape == (5,) and log_q.requires_grad

    val = run.load_data("validation")
    assert val is not None and val.inputs.shape == (6, 3, 48, 48)
    again = run.load_data("validation")  # read back from the cache with weights_only=True
    assert again is not None and torch.equal(val.inputs, again.inputs) and torch.equal(val.targets, again.targets)


def test_run_overrides_reach_the_space(tmp_path: Path) -> None:
    run = _run(tmp_path, overrides={"background": {"probs": [0.25, 0.25, 0.25, 0.25]}})
    probs = run.space.describe(run.space.init_psi())["background"]["probs"]
    assert probs == pytest.approx(dict.fromkeys(BACKGROUNDS, 0.25))


def test_bad_settings_are_pydantic_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        ShapesSettings(image_size=4)
    with pytest.raises(ValidationError):
        ShapesSettings(image_sise=64)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        shapes_simulator.render([_record(0)], {"image_size": "big"})
    with pytest.raises(ConfigError, match=r"simulator\.settings\.image_sise: unknown key"):
        _run(tmp_path, settings={"image_sise": 64})
