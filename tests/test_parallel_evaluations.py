"""Black-box evaluations of a batch on worker processes: the rows, models and random streams of
the one-at-a-time run; results kept across a resume; the budget respected; failures named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from executor_helpers import flaky_config
from flaky_simulator import flaky_simulator

from autosim_core import hookimpl
from autosim_core.config import parse_config
from autosim_core.evaluations import ERROR_LOG, EvaluationError
from autosim_core.plugins import load_registry
from autosim_core.run import Run
from autosim_core.rundir import CHECKPOINT, HISTORY

PROCESSES = {"kind": "processes", "workers": 2}
COMPARED = ("point", "val_metric", "val_loss", "train_loss", "images", "psi", "batch")


def searcher_data(make_toy_data: Any, cache_dir: Path, searcher: str, evaluations: int,
                  executor: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
    data = make_toy_data(cache_dir, iterations=evaluations, val_count=100)
    data["searcher"] = {"name": searcher, "settings": {"scenes_per_evaluation": 32, "epochs": 3, **settings}}
    data.pop("estimator")
    data["executor"] = executor or {}
    return data


def rows_of(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / HISTORY).read_text().splitlines() if line.strip()]


def outcome(folder: Path) -> dict[str, Any]:
    rows = [r for r in rows_of(folder) if "event" not in r]
    state = torch.load(folder / CHECKPOINT, weights_only=True)
    return {"rows": [{k: r.get(k) for k in COMPARED} for r in rows], "model": state["model"],
            "generator": state["generator"], "psi": state["psi"], "searcher": state["searcher"]}


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["rows"] == b["rows"]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["psi"][k], b["psi"][k]) for k in a["psi"])
    assert torch.equal(a["generator"], b["generator"])


@pytest.fixture(scope="session")
def inline_outcome(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, make_toy_data: Any) -> Any:
    """The outcome of a toy run evaluating one point at a time, run once per session for each
    (searcher, evaluations, budget, settings) asked for."""
    found: dict[str, dict[str, Any]] = {}

    def get(searcher: str, evaluations: int, budget: dict[str, int] | None = None, **settings: Any) -> dict[str, Any]:
        key = json.dumps([searcher, evaluations, budget, settings], sort_keys=True)
        if key not in found:
            data = searcher_data(make_toy_data, cache_dir, searcher, evaluations, **settings)
            if budget is not None:
                data["budget"] = budget
            folder = tmp_path_factory.mktemp("inline") / "run"
            Run(parse_config(data), folder).execute()
            found[key] = outcome(folder)
        return found[key]

    return get


@pytest.mark.parametrize(("searcher", "settings", "start_method"), [
    pytest.param("random", {"batch": 4}, "forkserver", marks=pytest.mark.processes, id="random-processes"),
    pytest.param("reinforce", {"batch": 3}, None, id="reinforce-in-process-workers")])
def test_a_batch_on_two_workers_equals_one_evaluation_at_a_time(tmp_path: Path, cache_dir: Path, make_toy_data: Any,
                                                               inline_outcome: Any, request: pytest.FixtureRequest,
                                                               searcher: str, settings: dict[str, Any],
                                                               start_method: str | None) -> None:
    """On real worker processes (random) and on the in-process stand-ins (REINFORCE)."""
    executor = dict(PROCESSES, start_method=start_method) if start_method else PROCESSES
    if start_method is None:
        request.getfixturevalue("fake_processes")
    parallel = searcher_data(make_toy_data, cache_dir, searcher, 6, executor, **settings)
    Run(parse_config(parallel), tmp_path / "parallel").execute()
    a, b = inline_outcome(searcher, 6, **settings), outcome(tmp_path / "parallel")
    assert_same(a, b)
    assert len({json.dumps(r["point"], sort_keys=True) for r in a["rows"]}) == 6
    assert b["searcher"]["ready"] == []


class StopAfter:
    """Stops the run right after the checkpoint of iteration ``n`` (as a kill there would)."""

    def __init__(self, n: int):
        self.n = n

    @hookimpl
    def on_iteration(self, run: Run, row: dict[str, Any]) -> None:
        if row["iteration"] == self.n:
            raise KeyboardInterrupt


def test_results_evaluated_ahead_survive_a_resume(tmp_path: Path, cache_dir: Path, make_toy_data: Any,
                                                  inline_outcome: Any, fake_processes: list[Any]) -> None:
    """Stopped after the first of four parallel evaluations, then resumed one at a time: the
    three evaluated ahead come from the checkpoint (their draws are behind its generator), and
    the run equals one that never left the run's process."""
    whole = searcher_data(make_toy_data, cache_dir, "random", 6, batch=4)
    parallel = searcher_data(make_toy_data, cache_dir, "random", 6, PROCESSES, batch=4)
    with pytest.raises(KeyboardInterrupt):
        Run(parse_config(parallel), tmp_path / "part", observers=(StopAfter(1),)).execute()
    stored = torch.load(tmp_path / "part" / CHECKPOINT, weights_only=True)["searcher"]
    assert len(stored["ready"]) == 3
    Run(parse_config(whole), tmp_path / "part").execute(resume=True)
    assert_same(inline_outcome("random", 6, batch=4), outcome(tmp_path / "part"))


@pytest.mark.parametrize(("budget", "evaluated"), [({"iterations": 3}, 3), ({"images": 80}, 3)])
def test_only_what_the_budget_allows_is_evaluated(tmp_path: Path, cache_dir: Path, make_toy_data: Any,
                                                  inline_outcome: Any, fake_processes: list[Any],
                                                  budget: dict[str, int], evaluated: int) -> None:
    data = searcher_data(make_toy_data, cache_dir, "random", 3, PROCESSES, batch=4)
    data["budget"] = budget
    Run(parse_config(data), tmp_path / "run").execute()
    got = outcome(tmp_path / "run")
    assert len(got["rows"]) == evaluated and got["searcher"]["ready"] == []
    # No evaluation past the budget was drawn: the random streams end where the inline run's do.
    assert_same(inline_outcome("random", 3, budget, batch=4), got)


def flaky_searcher_run(tmp_path: Path, **faults: Any) -> Run:
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir(parents=True)
    data = flaky_config(marker_dir, executor={**PROCESSES, "retries": 1}, iterations=4, **faults)
    data["searcher"] = {"name": "random", "settings": {"scenes_per_evaluation": 8, "epochs": 1, "batch": 2}}
    data["validation"] = {"preset": None, "count": 16, "seed": 77}
    registry = load_registry()
    registry.plugins["simulators"]["flaky"] = flaky_simulator
    return Run(parse_config(data), tmp_path / "run", registry=registry)


def test_a_failing_evaluation_names_its_point_and_cause(tmp_path: Path, fake_processes: list[Any]) -> None:
    # Scene 10 is in the second evaluation (scenes 8..15); it fails more often than retries allow.
    run = flaky_searcher_run(tmp_path, raise_on=[10], fail_times=9)
    with pytest.raises(EvaluationError, match=r"the evaluation of point \{'x.mean': .*\} failed in a worker "
                                              r"\(processes executor\): RenderError: scene 10 failed to render 2 "
                                              r"time\(s\)") as caught:
        run.execute()
    assert "\n" not in str(caught.value) and "traceback is in" in str(caught.value)
    # The render was retried in the worker as the run's executor settings ask (retries = 1) ...
    assert len(list((tmp_path / "markers").glob("raise-10-*"))) == 2
    # ... and the worker's traceback kept beside the run.
    assert "chosen to fail" in (tmp_path / "run" / ERROR_LOG).read_text()


def test_an_evaluation_whose_worker_died_runs_again(tmp_path: Path, fake_processes: list[Any]) -> None:
    """Scene 3's render kills its worker once: that worker is replaced (the other keeps its copy
    of the run), its evaluation runs again (one retry line in the history) and the run equals
    one without the fault."""
    flaky_searcher_run(tmp_path / "faulty", crash_on=[3]).execute()
    flaky_searcher_run(tmp_path / "clean").execute()
    faulty, clean = outcome(tmp_path / "faulty" / "run"), outcome(tmp_path / "clean" / "run")
    assert_same(faulty, clean)
    events = [r for r in rows_of(tmp_path / "faulty" / "run") if "event" in r]
    assert [(e["event"], e["iteration"], e["attempt"], e["retries"]) for e in events] == [
        ("evaluation_retry", 1, 1, 1)]
    assert len(events[0]["points"]) == 1 and events[0]["reason"] == "the worker process died (exit code 3)"
    # The worker of the first evaluation (scenes 0..7) was replaced, alone; the clean run's were not.
    evaluations = [b for b in fake_processes if b.recipe is not None and b.recipe.label == "evaluation"]
    assert [b.starts for b in evaluations] == [[0, 1, 0], [0, 1]]


def test_a_worker_dying_past_the_retries_stops_the_run(tmp_path: Path, fake_processes: list[Any]) -> None:
    run = flaky_searcher_run(tmp_path, crash_on=[3], fail_times=9)
    with pytest.raises(EvaluationError, match=r"the worker process evaluating point \{'x.mean': .*\} died "
                                              r"2 time\(s\) .*its last checkpoint is"):
        run.execute()


def test_a_skipped_evaluation_is_redrawn_as_one_at_a_time(tmp_path: Path, fake_processes: list[Any]) -> None:
    """Scene 2's NaN spoils the first evaluation of a parallel batch: the step is skipped, the
    results evaluated ahead are dropped and the point is evaluated again from the draws the
    inline run uses for its retry, so both runs agree row for row, the skipped row included."""
    flaky_searcher_run(tmp_path / "parallel", nan_on=[2]).execute()
    inline = flaky_searcher_run(tmp_path / "inline", nan_on=[2])
    inline.config.executor.kind = "inline"
    inline.execute()
    parallel_rows = rows_of(tmp_path / "parallel" / "run")
    assert parallel_rows[0]["skipped"].startswith("non-finite: train_loss is nan")
    assert parallel_rows[1]["point"] == parallel_rows[0]["point"]  # the same point, evaluated again
    assert_same(outcome(tmp_path / "inline" / "run"), outcome(tmp_path / "parallel" / "run"))
