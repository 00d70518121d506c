"""AutoSimulate on the toy problem with each estimator; history rows; resume equivalence."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from autosim_core import hookimpl
from autosim_core.config import parse_config
from autosim_core.run import Run
from autosim_core.rundir import CHECKPOINT, HISTORY

START = (0.0, 0.5)
TARGET = (3.0, 0.0)  # the toy's "target" preset, where the validation set comes from
CLASS0 = (-1.0, 0.0)
ITERATIONS = 12
SCENES = 64  # examples/toy.toml: scenes_per_iteration
REQUIRED = ("iteration", "images", "seconds", "seconds_render", "seconds_train", "seconds_hypergrad",
            "seconds_eval", "val_loss", "val_metric", "psi", "estimator")


def read_history(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / HISTORY).read_text().splitlines() if line.strip()]


def class1_mean(row: dict[str, Any]) -> tuple[float, float]:
    return row["psi"]["x1"]["mean"], row["psi"]["y1"]["mean"]


def dist(a: tuple[float, float], b: tuple[float, float]) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


class ToyRun:
    def __init__(self, folder: Path, summary: dict[str, Any]):
        self.folder = folder
        self.summary = summary
        self.rows = read_history(folder)


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, make_toy_data):
    """name -> a finished AutoSimulate run on the toy with that estimator (each run once per module)."""
    done: dict[str, ToyRun] = {}

    def get(estimator: str) -> ToyRun:
        if estimator not in done:
            data = make_toy_data(cache_dir, estimator=estimator, iterations=ITERATIONS)
            if estimator == "no-val":
                data.pop("validation")  # no-val needs no validation set
            folder = tmp_path_factory.mktemp(f"run-{estimator}") / "run"
            done[estimator] = ToyRun(folder, Run(parse_config(data), folder).execute())
        return done[estimator]

    return get


ESTIMATORS = ["quadratic", "approx-quadratic", "linear", "no-val"]
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_run_folder_and_summary(estimator: str, toy_runs) -> None:
    run = toy_runs(estimator)
    for name in (HISTORY, CHECKPOINT, "config.json", "psi.json", "summary.json"):
        assert (run.folder / name).is_file(), name
    assert run.summary["iterations"] == ITERATIONS
    assert run.summary["images"] == ITERATIONS * SCENES
    assert json.loads((run.folder / "summary.json").read_text())["iterations"] == ITERATIONS
    config = json.loads((run.folder / "config.json").read_text())
    assert config["space"]["x1"]["mean"] == START[0]
    assert config["estimator"]["name"] == estimator
    psi = json.loads((run.folder / "psi.json").read_text())
    assert psi["psi"]["x1"] == run.rows[-1]["psi"]["x1"]


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_history_rows_have_the_required_fields(estimator: str, toy_runs) -> None:
    check_history(toy_runs(estimator).rows, ITERATIONS, estimator)


def check_history(rows: list[dict[str, Any]], iterations: int, estimator: str) -> None:
    assert [r["iteration"] for r in rows] == list(range(1, iterations + 1))
    for i, row in enumerate(rows, start=1):
        missing = [k for k in REQUIRED if k not in row]
        assert not missing, f"row {i} lacks {missing}"
        assert row["images"] == i * SCENES
        split = sum(row[f"seconds_{p}"] for p in ("render", "train", "hypergrad", "eval"))
        assert all(row[f"seconds_{p}"] >= 0 for p in ("render", "train", "hypergrad", "eval"))
        assert split <= row["seconds"] + 1e-6
        assert set(row["psi"]) == {"label", "x0", "y0", "x1", "y1"}
        assert set(row["psi"]["x1"]) == {"mean", "std", "p10", "p90"}
        assert row["psi"]["x1"]["p10"] < row["psi"]["x1"]["mean"] < row["psi"]["x1"]["p90"]
        assert row["estimator"]["name"] == estimator
        assert math.isfinite(row["estimator"]["grad_norm"])
        if estimator == "no-val":
            assert row["val_loss"] is None and row["val_metric"] is None
        else:
            assert math.isfinite(row["val_loss"]) and 0.0 <= row["val_metric"] <= 1.0
    for a, b in itertools.pairwise(rows):
        assert b["seconds"] >= a["seconds"]
        for p in ("render", "train", "hypergrad", "eval"):
            assert b[f"seconds_{p}"] >= a[f"seconds_{p}"]
    if estimator == "quadratic":
        diag = rows[0]["estimator"]
        assert {"cg_iterations", "cg_residual", "negative_curvature"} <= set(diag)
        assert 1 <= diag["cg_iterations"] <= 10  # examples/toy.toml: max_iter = 10
    # learn=False parameters stay where they were declared
    x0 = rows[-1]["psi"]["x0"]
    assert (x0["mean"], x0["std"]) == (-1.0, pytest.approx(0.7))
    assert rows[-1]["psi"]["label"] == {"p": 0.5}


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_class1_moves_towards_the_target(estimator: str, toy_runs) -> None:
    final = class1_mean(toy_runs(estimator).rows[-1])
    assert dist(final, TARGET) < dist(START, TARGET), f"{estimator}: class-1 mean {final} vs start {START}"


def test_no_val_separates_the_classes(toy_runs) -> None:
    """What no-val does optimise: a lower training loss, by moving class 1 away from class 0."""
    rows = toy_runs("no-val").rows
    final = class1_mean(rows[-1])
    assert dist(final, CLASS0) > dist(START, CLASS0)
    assert rows[-1]["psi"]["x1"]["std"] < 0.7


def test_example_config_validation_loss_falls(tmp_path: Path, cache_dir: Path, toy_example: dict[str, Any]) -> None:
    """examples/toy.toml as shipped (40 iterations): history fields, and the validation loss falls."""
    data = dict(toy_example, cache_dir=str(cache_dir))
    summary = Run(parse_config(data), tmp_path / "run").execute()
    rows = read_history(tmp_path / "run")
    iterations = toy_example["budget"]["iterations"]
    check_history(rows, iterations, "quadratic")
    losses = [r["val_loss"] for r in rows]
    assert max(losses[-5:]) < losses[0], losses
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], losses
    assert rows[-1]["val_metric"] > rows[0]["val_metric"]
    assert dist(class1_mean(rows[-1]), TARGET) < dist(START, TARGET)
    assert summary["val"]["loss"] == pytest.approx(losses[-1], rel=1e-5)
    assert "test" in summary and 0.0 <= summary["test"]["metric"] <= 1.0


def test_default_training_learns_the_toy(tmp_path: Path, cache_dir: Path, make_toy_data) -> None:
    """[training] left out: its defaults train the model enough for psi to be learned (one
    epoch of Adam at 1e-3, the old defaults, ended near 0.06 accuracy here)."""
    data = make_toy_data(cache_dir, iterations=20)
    data.pop("training")
    data["searcher"] = {"name": "autosimulate"}
    summary = Run(parse_config(data), tmp_path / "run").execute()
    assert summary["val"]["metric"] > 0.85, summary["val"]


# ---------------------------------------------------------------------------- resume ---
class Interrupted(Exception):
    pass


class InterruptAt:
    """An observer that stops the run once iteration ``at`` is checkpointed and logged."""

    def __init__(self, at: int):
        self.at = at

    @hookimpl
    def on_iteration(self, row: dict[str, Any]) -> None:
        if row["iteration"] == self.at:
            raise Interrupted(f"stopped at iteration {self.at}")


RESUME_ITERATIONS = 5


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, make_toy_data) -> Path:
    folder = tmp_path_factory.mktemp("uninterrupted") / "run"
    Run(parse_config(make_toy_data(cache_dir, iterations=RESUME_ITERATIONS)), folder).execute()
    return folder


def assert_same_run(resumed: Path, reference: Path) -> None:
    a = torch.load(resumed / CHECKPOINT, weights_only=True)
    b = torch.load(reference / CHECKPOINT, weights_only=True)
    assert a["iteration"] == b["iteration"] == RESUME_ITERATIONS
    assert a["images"] == b["images"]
    assert set(a["psi"]) == set(b["psi"])
    for k in a["psi"]:
        assert torch.equal(a["psi"][k], b["psi"][k]), (k, a["psi"][k], b["psi"][k])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    rows_a, rows_b = read_history(resumed), read_history(reference)
    assert [r["iteration"] for r in rows_a] == list(range(1, RESUME_ITERATIONS + 1))
    for earlier, later in itertools.pairwise(rows_a):  # the clock and counters carry over the resume
        assert later["images"] == earlier["images"] + SCENES
        for key in ("seconds", "seconds_render", "seconds_train", "seconds_hypergrad", "seconds_eval"):
            assert later[key] >= earlier[key], key
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ("iteration", "images", "val_loss", "val_metric", "psi", "train_loss"):
            assert ra[key] == rb[key], (ra["iteration"], key)
    psi_a = json.loads((resumed / "psi.json").read_text())["raw"]
    psi_b = json.loads((reference / "psi.json").read_text())["raw"]
    assert psi_a == psi_b


@pytest.mark.parametrize("stop_at", [1, 3])
def test_resume_after_interrupt_equals_uninterrupted_run(stop_at: int, tmp_path: Path, cache_dir: Path,
                                                        uninterrupted: Path, make_toy_data) -> None:
    config = parse_config(make_toy_data(cache_dir, iterations=RESUME_ITERATIONS))
    folder = tmp_path / "run"
    with pytest.raises(Interrupted):
        Run(config, folder, observers=(InterruptAt(stop_at),)).execute()
    assert [r["iteration"] for r in read_history(folder)] == list(range(1, stop_at + 1))
    assert torch.load(folder / CHECKPOINT, weights_only=True)["iteration"] == stop_at
    assert not (folder / "summary.json").exists()

    summary = Run(config, folder).execute(resume=True)
    assert summary["iterations"] == RESUME_ITERATIONS
    assert summary["images"] == RESUME_ITERATIONS * SCENES
    assert_same_run(folder, uninterrupted)


def test_resume_after_a_crash_between_checkpoint_and_history(tmp_path: Path, cache_dir: Path,
                                                             uninterrupted: Path, make_toy_data,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies after iteration 3's history row is on disk, before its checkpoint is
    written: resuming from iteration 2's checkpoint must drop row 3 and log iteration 3 once."""
    config = parse_config(make_toy_data(cache_dir, iterations=RESUME_ITERATIONS))
    folder = tmp_path / "run"
    original = Run._checkpoint

    def die_before_the_checkpoint(self: Run, *args: Any, **kwargs: Any) -> None:
        if self.iteration == 3:
            raise Interrupted("killed between the history row and the checkpoint")
        original(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(Run, "_checkpoint", die_before_the_checkpoint)
        with pytest.raises(Interrupted):
            Run(config, folder).execute()
    assert [r["iteration"] for r in read_history(folder)] == [1, 2, 3]
    assert torch.load(folder / CHECKPOINT, weights_only=True)["iteration"] == 2
    Run(config, folder).execute(resume=True)
    assert_same_run(folder, uninterrupted)


def test_run_refuses_to_overwrite(cache_dir: Path, uninterrupted: Path, make_toy_data) -> None:
    config = parse_config(make_toy_data(cache_dir, iterations=RESUME_ITERATIONS))
    with pytest.raises(FileExistsError):
        Run(config, uninterrupted).execute()


def test_resume_refuses_a_changed_config_but_accepts_a_larger_budget(tmp_path: Path, cache_dir: Path,
                                                                      make_toy_data) -> None:
    data = make_toy_data(cache_dir, iterations=2)
    folder = tmp_path / "run"
    Run(parse_config(data), folder).execute()

    changed = dict(data, training={**data["training"], "lr": data["training"]["lr"] * 2})
    with pytest.raises(FileExistsError, match=r"differs .*training"):
        Run(parse_config(changed), folder).execute(resume=True)

    longer = dict(data, budget={"iterations": 3})
    summary = Run(parse_config(longer), folder).execute(resume=True)
    assert summary["iterations"] == 3
    assert [r["iteration"] for r in read_history(folder)] == [1, 2, 3]
