"""autosim compare on local worker processes: the same comparison as inline, finished runs kept,
unfinished ones resumed, a failing run reported while the others finish."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from autosim_core.cli import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def small_toy(name: str, folder: Path, cache: Path, *, source: str | None = None, training_lr: str = "") -> Path:
    """examples/<source or name> with a 50-image validation set (and, given, another training lr)."""
    text = (EXAMPLES / (source or name)).read_text().replace("count = 500", "count = 50")
    if training_lr:
        text = text.replace("lr = 0.05", f"lr = {training_lr}")
    path = folder / name
    path.write_text(f'cache_dir = "{cache}"\n' + text)
    return path


def compare(configs: list[Path], out: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["compare", *map(str, configs), "--out", str(out), "--budget-iterations", "2",
                                    *args])


def runs_of(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    comparison = json.loads((out / "comparison.json").read_text())
    return {(r["run"], r["seed_index"]): r for r in comparison["runs"]}


def history(run: Path) -> list[dict[str, Any]]:
    """The history rows less their timings (which differ between any two runs)."""
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("seconds")} for row in rows]


def mtimes(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in sorted(folder.iterdir())}


@pytest.mark.processes
def test_two_worker_processes_give_the_comparison_inline_gives(tmp_path: Path, cache_dir: Path) -> None:
    configs = [small_toy(n, tmp_path, cache_dir) for n in ("toy.toml", "toy_fixed.toml")]
    inline = compare(configs, tmp_path / "inline")
    assert inline.exit_code == 0, inline.output
    pooled = compare(configs, tmp_path / "pooled", "--executor", "processes", "--workers", "2")
    assert pooled.exit_code == 0, pooled.output
    expected, found = runs_of(tmp_path / "inline"), runs_of(tmp_path / "pooled")
    assert set(found) == set(expected) == {("toy", 0), ("toy_fixed", 0)}
    for key, row in expected.items():
        for column in ("best_val_metric", "final_val_metric", "test_metric", "images", "images_to_best", "psi"):
            assert found[key][column] == row[column], (key, column)
        folder = Path(key[0]) / f"seed-{key[1]}"
        assert history(tmp_path / "pooled" / folder) == history(tmp_path / "inline" / folder)
    # The autosimulate run moved psi: equal psi says the two executors ran the same steps.
    assert expected[("toy", 0)]["psi"] != expected[("toy_fixed", 0)]["psi"]


def test_resume_keeps_finished_runs_and_resumes_the_others(tmp_path: Path, cache_dir: Path,
                                                           fake_processes: list[Any]) -> None:
    configs = [small_toy(n, tmp_path, cache_dir) for n in ("toy.toml", "toy_fixed.toml")]
    out = tmp_path / "out"
    first = compare(configs, out, "--seeds", "2")
    assert first.exit_code == 0, first.output
    uninterrupted = runs_of(out)
    rows = {key: history(out / key[0] / f"seed-{key[1]}") for key in uninterrupted}

    finished = [out / "toy" / "seed-0", out / "toy_fixed" / "seed-0"]
    finished_mtimes = [mtimes(folder) for folder in finished]
    # Stopped during set-up: config.json (and config.toml) written, nothing else.
    setup_only = out / "toy" / "seed-1"
    for path in setup_only.iterdir():
        if path.name not in ("config.json", "config.toml"):
            path.unlink()
    # Stopped after its last checkpoint, before its summary.
    (out / "toy_fixed" / "seed-1" / "summary.json").unlink()

    resumed = compare(configs, out, "--seeds", "2", "--resume", "--executor", "processes", "--workers", "2")
    assert resumed.exit_code == 0, resumed.output
    assert [mtimes(folder) for folder in finished] == finished_mtimes  # not run again: no file rewritten
    again = runs_of(out)
    for key, row in uninterrupted.items():
        for column in ("best_val_metric", "final_val_metric", "test_metric", "images", "psi"):
            assert again[key][column] == row[column], (key, column)
        assert history(out / key[0] / f"seed-{key[1]}") == rows[key]


@pytest.mark.parametrize("executor", [["--executor", "inline"], ["--executor", "processes", "--workers", "2"]])
def test_a_failing_run_is_reported_and_the_others_finish(executor: list[str], tmp_path: Path, cache_dir: Path,
                                                         fake_processes: list[Any]) -> None:
    # A training learning rate beyond float32: Adam's first step raises in iteration 1.
    configs = [small_toy("toy_overflow.toml", tmp_path, cache_dir, source="toy.toml", training_lr="1e300"),
               small_toy("toy_fixed.toml", tmp_path, cache_dir)]
    out = tmp_path / "out"
    result = compare(configs, out, *executor)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    log = out / "toy_overflow" / "seed-0" / "error.log"
    assert errors == [f"error: toy_overflow seed 0: RuntimeError: value cannot be converted to type float without "
                      f"overflow (traceback in {log})",
                      "error: 1 of 2 run(s) failed, so no comparison was written; the others are kept: fix the "
                      "cause and continue with --resume"]
    assert "Traceback" in log.read_text() and "overflow" in log.read_text()
    assert not (out / "toy_overflow" / "seed-0" / "summary.json").exists()
    assert len(history(out / "toy_fixed" / "seed-0")) == 2
    assert (out / "toy_fixed" / "seed-0" / "summary.json").exists()
    assert not (out / "comparison.json").exists() and not (out / "comparison.md").exists()


def test_runs_sharing_the_console_prefix_their_lines_with_name_and_seed(tmp_path: Path, cache_dir: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from autosim_core.compare_runs import RunJob, run_jobs
    from autosim_core.config import load_config

    config = load_config(small_toy("toy.toml", tmp_path, cache_dir)).model_dump()
    config["budget"] = {"iterations": 2}
    jobs = [RunJob("toy", i, dict(config, seed=i), str(tmp_path / f"seed-{i}"), "", resume=False,
                   live_progress=False) for i in (0, 1)]
    assert run_jobs(jobs, "inline") == [None, None]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    for i in (0, 1):
        mine = [line for line in lines if line.startswith(f"toy seed {i}: ")]
        assert [line.split(": ", 1)[1].split()[0] for line in mine] == ["autosim", "it", "it", "done:", "seconds:"]
        assert f"toy seed {i}" in [line.strip() for line in lines]  # the title of its psi table
    assert not [line for line in lines if line.startswith(("it ", "done:", "seconds:"))]
