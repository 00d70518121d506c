"""``autosim run`` killed with SIGKILL at random moments, or again and again in its first second,
and requeued with ``--resume`` each time ends as the uninterrupted run: the same psi, model and
history, no row lost or logged twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from autosim_core.rundir import CHECKPOINT, HISTORY, SNAPSHOTS

HARNESS = Path(__file__).with_name("kill_harness.py")
COMPARED = ("iteration", "images", "train_loss", "val_loss", "val_metric", "psi", "estimator")
# "config": killed the moment config.json appears, in the set-up (a window too short to hit by time);
# "loop+S": S seconds after the start's first checkpoint, in the loop however loaded the machine is.
DELAYS = (0.0, 0.01, 0.02, 0.03, 0.05, "config", 0.08, 0.12, 0.2, 0.35, "loop", "loop+0.03", "loop+0.08",
          "loop+0.15")
"""Delays of the kills: the first few land before the run folder is written, one in the set-up, the
timed ones after it in the set-up or the loop as the machine's pace has it, the last four at moments
through the loop (in a phase, between a row and its checkpoint, in a checkpoint's write: where each
lands is printed and kept in the report)."""


def rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / HISTORY).read_text().splitlines()]


def kill_and_resume(folder: Path, cache_dir: Path, *args: str) -> dict[str, Any]:
    """The harness's report after it killed and resumed FOLDER/killed and ran FOLDER/reference."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, str(HARNESS), str(folder), "--cache", str(cache_dir), *args],
                          env=env, capture_output=True, text=True, timeout=300)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return json.loads((folder / "report.json").read_text())


def assert_same_as_uninterrupted(folder: Path, report: dict[str, Any]) -> None:
    killed, reference = folder / "killed", folder / "reference"
    a = torch.load(killed / CHECKPOINT, weights_only=True)
    b = torch.load(reference / CHECKPOINT, weights_only=True)
    assert a["iteration"] == b["iteration"] == report["iterations"]
    for key in ("psi", "model"):
        for name in b[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    for k, state in b["model_optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(a["model_optimizer"]["state"][k][name], value), (k, name)
    rows_a, rows_b = rows(killed), rows(reference)
    assert [r["iteration"] for r in rows_a] == list(range(1, report["iterations"] + 1))
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in COMPARED:
            assert ra[key] == rb[key], (ra["iteration"], key)
    assert json.loads((killed / "psi.json").read_text()) == json.loads((reference / "psi.json").read_text())
    snapshots_a = json.loads((killed / SNAPSHOTS).read_text())
    snapshots_b = json.loads((reference / SNAPSHOTS).read_text())
    assert [s["at"] for s in snapshots_a] == [s["at"] for s in snapshots_b] == [0.25, 0.5, 1.0]
    assert snapshots_a[-1]["raw"] == json.loads((killed / "psi.json").read_text())["raw"]
    if not report["budget_raised_to"]:  # a raised budget moves the fractions after the fact
        for sa, sb in zip(snapshots_a, snapshots_b, strict=True):
            assert {k: v for k, v in sa.items() if k != "seconds"} == {k: v for k, v in sb.items() if k != "seconds"}
    assert not list(killed.glob(".*.tmp"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the harness forks the killed runs")
def test_sigkills_from_the_first_moment_on_requeued_with_resume_leave_the_run_unchanged(tmp_path: Path,
                                                                                      cache_dir: Path) -> None:
    """A job scheduler requeues the same ``autosim run --resume`` after each SIGKILL, from the very
    first start on: a start killed before it wrote anything is started again, one killed in its
    set-up or loop continues, and the end is the uninterrupted run."""
    report = kill_and_resume(tmp_path, cache_dir, "--delays", ",".join(map(str, DELAYS)))
    kills = report["kills"]
    assert [k["delay"] for k in kills] == list(DELAYS)
    assert not kills[0]["resumed"]
    assert sum(not k["config"] for k in kills) >= 1  # before config.json: nothing to resume
    assert sum(k["config"] and k["checkpoint"] is None for k in kills) >= 1  # during set-up
    # The harness checks that each start died by the kill; the loop-anchored ones died in the loop.
    in_loop = [k for k in kills if k["checkpoint"] is not None and k["checkpoint"] < report["iterations"]]
    assert sum(isinstance(k["delay"], str) and k["delay"].startswith("loop") for k in in_loop) == 4
    assert_same_as_uninterrupted(tmp_path, report)
