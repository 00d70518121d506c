"""``autosim train``: a fresh model trained on the psi a run hands over, and the psi snapshots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from autosim_core.cli import app
from autosim_core.config import parse_config
from autosim_core.final import FinalTrainer, FinalTrainingError
from autosim_core.run import Run
from autosim_core.rundir import HISTORY, SNAPSHOTS

ITERATIONS = 8


def finished_run(folder: Path, data: dict[str, Any]) -> Path:
    Run(parse_config(data), folder).execute()
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, make_toy_data) -> dict[str, Path]:
    """Finished toy runs: AutoSimulate (linear), random search, and fixed at the start and at the target."""
    made = {}
    base = make_toy_data(cache_dir, estimator="linear", iterations=ITERATIONS, test=True)
    base["final_training"] = {"images": 256, "epochs": 3}
    made["autosimulate"] = finished_run(tmp_path_factory.mktemp("auto") / "run", base)
    random = dict(base, searcher={"name": "random", "settings": {"scenes_per_evaluation": 64, "epochs": 3,
                                                                 "batch": 4}})
    made["random"] = finished_run(tmp_path_factory.mktemp("random") / "run", random)
    for name, start in (("initial", "initial"), ("target", "target")):
        fixed = dict(base, searcher={"name": "fixed"}, budget={"iterations": 2},
                     simulator={"name": "toy-gaussians", "start": start})
        made[name] = finished_run(tmp_path_factory.mktemp(name) / "run", fixed)
    return made


def test_snapshots_are_the_psi_of_the_iterations_at_the_fractions_of_the_budget(runs: dict[str, Path]) -> None:
    rows = [json.loads(line) for line in (runs["autosimulate"] / HISTORY).read_text().splitlines()]
    snapshots = json.loads((runs["autosimulate"] / SNAPSHOTS).read_text())
    assert [s["at"] for s in snapshots] == [0.25, 0.5, 1.0]
    # The first iteration at which iterations / budget reaches the fraction.
    assert [s["iteration"] for s in snapshots] == [math.ceil(f * ITERATIONS) for f in (0.25, 0.5, 1.0)]
    for snapshot in snapshots:
        row = rows[snapshot["iteration"] - 1]
        assert snapshot["psi"] == row["psi"] and snapshot["images"] == row["images"]
    assert snapshots[-1]["raw"] == json.loads((runs["autosimulate"] / "psi.json").read_text())["raw"]


def test_a_black_box_runs_snapshots_are_its_best_point_so_far(runs: dict[str, Path]) -> None:
    rows = [json.loads(line) for line in (runs["random"] / HISTORY).read_text().splitlines()]
    for snapshot in json.loads((runs["random"] / SNAPSHOTS).read_text()):
        seen = rows[:snapshot["iteration"]]
        best = max(seen, key=lambda r: r["val_metric"])
        assert snapshot["psi"] == best["psi"]


def test_the_same_psi_and_seeds_give_the_same_weights_and_scores(runs: dict[str, Path], tmp_path: Path) -> None:
    reports = []
    for out in (tmp_path / "a", tmp_path / "b"):
        trainer = FinalTrainer(runs["autosimulate"], seeds=2)
        reports.append(trainer.score(out))
    a, b = (torch.load(tmp_path / name / "model.pt", weights_only=True) for name in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in report["points"][-1]["per_seed"]]
             for report in reports]
    assert strip[0] == strip[1]
    assert reports[0]["seeds"] == [10_000, 10_001]  # seed + S * seeds + r for the run's seed 0
    # The two seeds are two different models.
    assert strip[0][0]["test"] != strip[0][1]["test"] or strip[0][0]["train_loss"] != strip[0][1]["train_loss"]


def test_a_fresh_model_on_the_validation_distribution_beats_one_on_the_start(runs: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    """The toy's validation set comes from `target`: renders of it train the better fresh model."""
    scores = {name: FinalTrainer(runs[name], seeds=2).score(tmp_path / name)["final"]["test_metric"]["mean"]
              for name in ("initial", "target")}
    assert scores["target"] > scores["initial"] + 0.05, scores


def test_a_black_box_run_trains_on_its_best_point(runs: dict[str, Path], tmp_path: Path) -> None:
    report = FinalTrainer(runs["random"]).score(tmp_path / "final")
    summary = json.loads((runs["random"] / "summary.json").read_text())
    assert report["points"][-1]["psi"] == summary["best"]["psi"]


def test_snapshots_are_scored_and_equal_points_trained_once(runs: dict[str, Path], tmp_path: Path) -> None:
    report = FinalTrainer(runs["initial"]).score(tmp_path / "final", snapshots=True)
    assert [p["at"] for p in report["points"]] == [0.25, 0.5, 1.0]
    # A fixed run hands over the same psi at every fraction: one fresh model serves all three.
    assert len(list((tmp_path / "final" / "parts").glob("*.pt"))) == 1
    assert len({json.dumps(p["per_seed"]) for p in report["points"]}) == 1


def test_a_run_without_a_test_set_reports_validation_only(tmp_path: Path, cache_dir: Path, make_toy_data) -> None:
    data = make_toy_data(cache_dir, estimator="linear", iterations=2)
    data["final_training"] = {"images": 64, "epochs": 1}
    folder = finished_run(tmp_path / "run", data)
    report = FinalTrainer(folder).score()
    assert report["metric"] == "val"
    assert report["final"]["test_metric"]["n"] == 0 and report["final"]["val_metric"]["n"] == 1
    assert (folder / "final" / "final.json").exists() and (folder / "final" / "model.pt").exists()


def test_training_on_the_validation_set_is_scored_on_test(runs: dict[str, Path], tmp_path: Path) -> None:
    report = FinalTrainer(runs["autosimulate"]).score(tmp_path / "val", on="validation")
    assert report["trained_on"] == "validation"
    assert report["final"]["test_metric"]["mean"] > 0.5


def test_bad_options_are_one_line(runs: dict[str, Path], tmp_path: Path) -> None:
    cli = CliRunner()
    cases = [
        ([str(tmp_path)], "is not a finished run folder"),
        ([str(runs["initial"]), "--on", "nowhere"], "--on: unknown choice 'nowhere'"),
        ([str(runs["initial"]), "--on", "validation", "--snapshots"], "--snapshots"),
        ([str(runs["initial"]), "-n", "0"], "-n"),
    ]
    for args, words in cases:
        result = cli.invoke(app, ["train", *args])
        assert result.exit_code == 2, (args, result.output)
        assert words in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_a_fresh_seed_equal_to_an_evaluation_sets_seed_is_refused(runs: dict[str, Path]) -> None:
    # The toy's validation seed is 1001: seeds 10 000 ... would need 1001 - 10 000 < 0; a run seed
    # of 0 with final_training.seed 1000 and two models reaches it.
    config = json.loads((runs["initial"] / "config.json").read_text())
    config["final_training"]["seed"] = 1000
    (runs["initial"] / "config.json").write_text(json.dumps(config))
    try:
        with pytest.raises(FinalTrainingError, match=r"equals validation\.seed"):
            FinalTrainer(runs["initial"], seeds=2)
    finally:
        config["final_training"]["seed"] = 10_000
        (runs["initial"] / "config.json").write_text(json.dumps(config))


def test_a_cosine_schedule_decays_the_rate_to_zero_over_the_fresh_models_steps(
        runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autosim_core.training import Training

    rates: list[float] = []
    fine_tune = Training.fine_tune

    def recording(self: Training, model: Any, optimizer: Any, batch: Any, *args: Any, **kwargs: Any) -> float:
        step = kwargs["after_step"]

        def after_step() -> None:
            step()
            rates.append(optimizer.param_groups[0]["lr"])
        return fine_tune(self, model, optimizer, batch, *args, **dict(kwargs, after_step=after_step))

    monkeypatch.setattr(Training, "fine_tune", recording)
    trainer = FinalTrainer(runs["target"], final_training={"images": 40, "epochs": 3, "batch_size": 16,
                                                           "schedule": "cosine"})
    report = trainer.score(tmp_path / "cosine")
    lr, steps = trainer.recipe.lr, 3 * 3  # ceil(40 / 16) minibatches per epoch
    assert rates == pytest.approx([lr * (1 + math.cos(math.pi * t / steps)) / 2 for t in range(1, steps + 1)])
    assert report["schedule"] == "cosine"
    constant = FinalTrainer(runs["target"], final_training={"images": 40, "epochs": 3, "batch_size": 16})
    assert constant.part_key("psi", 1) != trainer.part_key("psi", 1)
