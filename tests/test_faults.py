"""Runs that die at every phase and resume to the same result; steps with NaN or inf undone."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from autosim_core import hookimpl
from autosim_core import run as run_module
from autosim_core.cli import app
from autosim_core.config import parse_config
from autosim_core.run import NonFiniteError, Run
from autosim_core.rundir import CHECKPOINT, HISTORY, DamagedHistoryError
from autosim_core.training import Training

ITERATIONS = 4
CRASH_AT = 3
COMPARED = ("iteration", "images", "train_loss", "val_loss", "val_metric", "psi", "estimator")


class Died(Exception):
    """Stands for the process dying at a fault point."""


def read_rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / HISTORY).read_text().splitlines() if line.strip()]


def assert_same_run(resumed: Path, reference: Path) -> None:
    """Bit for bit the same psi, model, optimiser state and history values (the clock aside)."""
    a = torch.load(resumed / CHECKPOINT, weights_only=True)
    b = torch.load(reference / CHECKPOINT, weights_only=True)
    assert a["iteration"] == b["iteration"] == ITERATIONS
    for k in b["psi"]:
        assert torch.equal(a["psi"][k], b["psi"][k]), k
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, state in b["model_optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(a["model_optimizer"]["state"][k][name], value), (k, name)
    rows_a, rows_b = read_rows(resumed), read_rows(reference)
    assert [r["iteration"] for r in rows_a] == list(range(1, ITERATIONS + 1))  # none lost, none twice
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in COMPARED:
            assert ra[key] == rb[key], (ra["iteration"], key)
    assert json.loads((resumed / "psi.json").read_text()) == json.loads((reference / "psi.json").read_text())
    summary_a = json.loads((resumed / "summary.json").read_text())
    summary_b = json.loads((reference / "summary.json").read_text())
    assert summary_a["val"] == summary_b["val"]


@pytest.fixture(scope="module")
def toy_config(cache_dir: Path, make_toy_data) -> Any:
    return parse_config(make_toy_data(cache_dir, iterations=ITERATIONS))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, toy_config: Any) -> Path:
    folder = tmp_path_factory.mktemp("uninterrupted") / "run"
    Run(toy_config, folder).execute()
    return folder


def dies_at(method: str, iteration: int, *, after: bool = False) -> Callable[[pytest.MonkeyPatch], None]:
    """A fault point: ``Run.<method>`` raises when called in ``iteration`` (after doing its work
    when ``after``)."""

    def install(m: pytest.MonkeyPatch) -> None:
        original = getattr(Run, method)

        def dying(self: Run, *args: Any, **kwargs: Any) -> Any:
            if self.iteration == iteration and not after:
                raise Died(f"died in {method} at iteration {iteration}")
            result = original(self, *args, **kwargs)
            if self.iteration == iteration and after:
                raise Died(f"died after {method} at iteration {iteration}")
            return result

        m.setattr(Run, method, dying)

    return install


def dies_writing_the_checkpoint(m: pytest.MonkeyPatch) -> None:
    """torch.save writes half of iteration CRASH_AT's checkpoint, then the process dies."""
    original = torch.save

    def half_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(obj, dict) and obj.get("iteration") == CRASH_AT and "model_optimizer" in obj:
            f.write(b"PK\x03\x04 half a checkpoint")
            f.flush()
            raise Died("died writing the checkpoint")
        original(obj, f, *args, **kwargs)

    m.setattr(torch, "save", half_save)


def dies_before_the_history_opens(m: pytest.MonkeyPatch) -> None:
    """Dies after the first checkpoint (iteration 0), before history.jsonl is opened."""

    def dying(self: Any, folder: Any) -> None:
        raise Died("died before opening the history")

    m.setattr(run_module.HistoryWriter, "__init__", dying)


def dies_in_setup(m: pytest.MonkeyPatch) -> None:
    """Dies after config.json is written, while the model is built (no checkpoint yet)."""

    def dying(self: Run) -> torch.nn.Module:
        raise Died("died during set-up")

    m.setattr(Run, "create_model", dying)


FAULTS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "set-up": dies_in_setup,
    "before the history opens": dies_before_the_history_opens,
    "first render": dies_at("render_training", 1),
    "render": dies_at("render_training", CRASH_AT),
    "fine-tune": dies_at("fine_tune", CRASH_AT),
    "hypergradient": dies_at("val_gradient", CRASH_AT),  # called inside the estimator
    "validation scores": dies_at("validation_row", CRASH_AT),
    "between history row and checkpoint": dies_at("_checkpoint", CRASH_AT),
    "checkpoint write": dies_writing_the_checkpoint,
    "after the checkpoint": dies_at("_checkpoint", CRASH_AT, after=True),
}

# What the folder holds when the process dies: the last checkpoint's iteration (None: no
# checkpoint) and the history rows on disk.
ON_DISK = {
    "set-up": (None, []), "before the history opens": (0, []), "first render": (0, []),
    "render": (2, [1, 2]), "fine-tune": (2, [1, 2]), "hypergradient": (2, [1, 2]), "validation scores": (2, [1, 2]),
    "between history row and checkpoint": (2, [1, 2, 3]), "checkpoint write": (2, [1, 2, 3]),
    "after the checkpoint": (3, [1, 2, 3]),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_run_that_dies_anywhere_resumes_to_the_uninterrupted_result(fault: str, tmp_path: Path, toy_config: Any,
                                                                      uninterrupted: Path) -> None:
    folder = tmp_path / "run"
    with pytest.MonkeyPatch.context() as m:
        FAULTS[fault](m)
        with pytest.raises(Died):
            Run(toy_config, folder).execute()
    checkpoint, rows = ON_DISK[fault]
    assert (folder / "config.json").is_file()
    if checkpoint is None:
        assert not (folder / CHECKPOINT).exists()
    else:
        assert torch.load(folder / CHECKPOINT, weights_only=True)["iteration"] == checkpoint
    assert [r["iteration"] for r in read_rows(folder)] == rows if (folder / HISTORY).exists() else rows == []
    # A fresh run is refused once there is work to lose; --resume continues it.
    if checkpoint is not None:
        with pytest.raises(FileExistsError, match="--resume"):
            Run(toy_config, folder).execute()

    summary = Run(toy_config, folder).execute(resume=True)
    assert summary["iterations"] == ITERATIONS
    assert not list(folder.glob(".*.tmp"))
    assert_same_run(folder, uninterrupted)


def test_resume_drops_a_torn_last_row(tmp_path: Path, toy_config: Any, uninterrupted: Path) -> None:
    """A kill in the middle of writing row 3 leaves half a line: resuming drops it with the
    rows past the checkpoint, and the run ends as the uninterrupted one."""
    folder = tmp_path / "run"
    with pytest.MonkeyPatch.context() as m:
        FAULTS["between history row and checkpoint"](m)
        with pytest.raises(Died):
            Run(toy_config, folder).execute()
    text = (folder / HISTORY).read_text()
    last = text.splitlines()[-1]
    (folder / HISTORY).write_text(text[: len(text) - len(last) // 2 - 1])  # half of row 3, no newline
    with pytest.raises(json.JSONDecodeError):
        json.loads((folder / HISTORY).read_text().splitlines()[-1])
    Run(toy_config, folder).execute(resume=True)
    assert_same_run(folder, uninterrupted)


def test_resume_refuses_a_damaged_history(tmp_path: Path, toy_config: Any) -> None:
    folder = tmp_path / "run"
    with pytest.MonkeyPatch.context() as m:
        FAULTS["after the checkpoint"](m)
        with pytest.raises(Died):
            Run(toy_config, folder).execute()
    lines = (folder / HISTORY).read_text().splitlines()
    (folder / HISTORY).write_text("\n".join([lines[0], "{not json", *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"line 2 is not a JSON row"):
        Run(toy_config, folder).execute(resume=True)
    (folder / HISTORY).write_text("\n".join([lines[0], lines[2]]) + "\n")  # row 2 lost
    with pytest.raises(ValueError, match=r"rows of iterations \[1, 3\] do not match the checkpoint's 1..3"):
        Run(toy_config, folder).execute(resume=True)


@pytest.mark.parametrize("folder_exists", [False, True])
def test_resume_on_a_folder_without_a_run_starts_it(folder_exists: bool, tmp_path: Path, toy_config: Any,
                                                    uninterrupted: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A requeued ``--resume`` whose first start died before config.json starts the run."""
    folder = tmp_path / "run"
    if folder_exists:
        folder.mkdir()
        (folder / ".config.json.tmp").write_bytes(b'{"half')  # a kill while config.json was written
    with caplog.at_level("WARNING", logger="autosim"):
        Run(toy_config, folder).execute(resume=True)
    assert f"--resume: nothing to resume in {folder}; starting the run" in caplog.messages
    assert not list(folder.glob(".*.tmp"))
    assert_same_run(folder, uninterrupted)


def test_resume_refuses_a_checkpoint_without_its_history_or_config(tmp_path: Path, toy_config: Any) -> None:
    folder = tmp_path / "run"
    with pytest.MonkeyPatch.context() as m:
        FAULTS["after the checkpoint"](m)
        with pytest.raises(Died):
            Run(toy_config, folder).execute()
    history = (folder / HISTORY).read_bytes()
    (folder / HISTORY).unlink()
    with pytest.raises(DamagedHistoryError) as info:
        Run(toy_config, folder).execute(resume=True)
    assert str(info.value) == (f"{folder / HISTORY} is missing, but the checkpoint is at iteration {CRASH_AT}; "
                               "the history is lost")
    assert not (folder / HISTORY).exists()

    (folder / HISTORY).write_bytes(history)
    (folder / "config.json").unlink()
    changed = toy_config.model_copy(update={"training": toy_config.training.model_copy(update={"lr": 0.07})})
    for config in (toy_config, changed):
        with pytest.raises(FileNotFoundError) as refused:
            Run(config, folder).execute(resume=True)
        assert str(refused.value) == (f"--resume: {folder} holds {CHECKPOINT}, {HISTORY}, snapshots.json but no "
                                      "config.json, so the config it ran under cannot be checked; it is not resumed")
    assert not (folder / "config.json").exists()
    assert torch.load(folder / CHECKPOINT, weights_only=True)["iteration"] == CRASH_AT


# ------------------------------------------------------------------------- NaN and inf ---
class StateLog:
    """An observer keeping psi and the model's state after every iteration."""

    def __init__(self) -> None:
        self.psi: dict[int, dict[str, torch.Tensor]] = {}
        self.model: dict[int, dict[str, torch.Tensor]] = {}

    @hookimpl
    def on_iteration(self, run: Run, row: dict[str, Any]) -> None:
        assert run.model is not None
        self.psi[row["iteration"]] = {k: v.detach().clone() for k, v in run.psi.items()}
        self.model[row["iteration"]] = {k: v.detach().clone() for k, v in run.model.state_dict().items()}


@contextmanager
def nan_training_loss(iterations: set[int]) -> Iterator[None]:
    """The training loss of the fine-tuning in ``iterations`` is NaN (validation stays clean)."""
    with pytest.MonkeyPatch.context() as m:
        fine_tune, losses = Run.fine_tune, Training.losses
        poisoned: list[bool] = [False]

        def poisoned_fine_tune(self: Run, *args: Any, **kwargs: Any) -> float:
            poisoned[0] = self.iteration in iterations
            try:
                return fine_tune(self, *args, **kwargs)
            finally:
                poisoned[0] = False

        def poisoned_losses(self: Training, outputs: Any, targets: Any) -> torch.Tensor:
            values = losses(self, outputs, targets)
            return values * float("nan") if poisoned[0] else values

        m.setattr(Run, "fine_tune", poisoned_fine_tune)
        m.setattr(Training, "losses", poisoned_losses)
        yield


def assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_nan_loss_skips_the_step_and_the_run_goes_on(tmp_path: Path, cache_dir: Path, make_toy_data) -> None:
    config = parse_config(make_toy_data(cache_dir, iterations=5))
    log = StateLog()
    with nan_training_loss({2}):
        summary = Run(config, tmp_path / "run", observers=(log,)).execute()
    rows = read_rows(tmp_path / "run")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5]
    assert summary["iterations"] == 5 and (tmp_path / "run" / "summary.json").is_file()
    assert rows[1]["skipped"] == "non-finite: train_loss is nan"
    assert rows[1]["train_loss"] is None  # null, not NaN: the history stays strict JSON
    assert all("skipped" not in r for i, r in enumerate(rows) if i != 1)
    # The skipped step left psi and the model as the step before left them...
    assert rows[1]["psi"] == rows[0]["psi"]
    assert_states_equal(log.psi[2], log.psi[1])
    assert_states_equal(log.model[2], log.model[1])
    # ...and the next one moved on from there, on new scenes.
    assert rows[2]["psi"] != rows[1]["psi"]
    assert rows[2]["images"] == 3 * rows[0]["images"]
    assert all(math.isfinite(r["val_loss"]) for r in rows[2:])
    assert summary["best"]["iteration"] != 2


def test_a_nan_hypergradient_skips_the_step(tmp_path: Path, cache_dir: Path, make_toy_data,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(make_toy_data(cache_dir, iterations=3))
    original = Run.val_gradient

    def nan_gradient(self: Run, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        grad = original(self, model)
        return {k: g * float("inf") for k, g in grad.items()} if self.iteration == 2 else grad

    monkeypatch.setattr(Run, "val_gradient", nan_gradient)
    log = StateLog()
    Run(config, tmp_path / "run", observers=(log,)).execute()
    rows = read_rows(tmp_path / "run")
    assert rows[1]["skipped"].startswith("non-finite: the hypergradient's norm is")
    assert_states_equal(log.psi[2], log.psi[1])
    assert_states_equal(log.model[2], log.model[1])
    assert "skipped" not in rows[2] and all(math.isfinite(v.item()) for v in log.psi[3].values())


def test_too_many_nan_steps_in_a_row_stop_the_run(tmp_path: Path, cache_dir: Path, make_toy_data) -> None:
    config = parse_config(dict(make_toy_data(cache_dir, iterations=8), max_nonfinite=2))
    log = StateLog()
    folder = tmp_path / "run"
    # One bad step, a good one (the count starts again), then bad steps until the limit.
    with nan_training_loss({2, 4, 5, 6, 7, 8}), \
            pytest.raises(NonFiniteError, match=r"^2 steps in a row produced NaN or inf, the last at iteration 5 "
                                                r"\(train_loss is nan\)"):
        Run(config, folder, observers=(log,)).execute()
    rows = read_rows(folder)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5]
    assert ["skipped" in r for r in rows] == [False, True, False, True, True]
    state = torch.load(folder / CHECKPOINT, weights_only=True)
    assert state["iteration"] == 5
    assert_states_equal(state["model"], log.model[3])
    assert_states_equal(state["psi"], log.psi[3])
    assert not (folder / "summary.json").exists()


def test_the_cli_reports_the_stop_in_one_line(tmp_path: Path, cache_dir: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "examples" / "toy.toml").read_text()
    text = text.replace("iterations = 40", "iterations = 6").replace("count = 500", "count = 50")
    config = tmp_path / "toy.toml"
    config.write_text(f'cache_dir = "{cache_dir}"\nmax_nonfinite = 2\n' + text)
    with nan_training_loss({1, 2, 3, 4, 5, 6}):
        result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1].startswith(
        "error: 2 steps in a row produced NaN or inf, the last at iteration 2 (train_loss is nan)")
    for line in (tmp_path / "run" / HISTORY).read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in history.jsonl"))


def test_a_folder_from_before_max_nonfinite_resumes_under_its_default(tmp_path: Path, cache_dir: Path,
                                                                     make_toy_data) -> None:
    data = make_toy_data(cache_dir, iterations=2)
    folder = tmp_path / "run"
    Run(parse_config(dict(data, budget={"iterations": 1})), folder).execute()
    stored = json.loads((folder / "config.json").read_text())
    del stored["max_nonfinite"]  # as written before the key existed
    (folder / "config.json").write_text(json.dumps(stored))
    with pytest.raises(FileExistsError, match=r"\(in: max_nonfinite\)"):
        Run(parse_config(dict(data, max_nonfinite=5)), folder).execute(resume=True)
    assert Run(parse_config(data), folder).execute(resume=True)["iterations"] == 2
