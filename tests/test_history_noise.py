"""The history records the hypergradient per coordinate and its noise; the variance-reduction
settings run end to end on the toy and resume exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from autosim_core.config import ConfigError, parse_config
from autosim_core.run import Run
from autosim_core.rundir import CHECKPOINT, HISTORY

LEARNABLE = {"x1.loc": 1, "x1.log_std": 1, "y1.loc": 1, "y1.log_std": 1}


def settings_data(cache_dir: Path, make_toy_data, iterations: int, **searcher: object) -> dict:
    data = make_toy_data(cache_dir, estimator="linear", iterations=iterations, val_count=100)
    data["searcher"]["settings"].update(searcher)
    return data


def rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / HISTORY).read_text().splitlines() if line.strip()]


def test_rows_hold_the_hypergradient_and_its_standard_error(tmp_path: Path, cache_dir: Path, make_toy_data) -> None:
    data = settings_data(cache_dir, make_toy_data, 3, reuse_iterations=2, sampling="sobol", max_kl=0.05,
                         min_prob_ratio=0.1, min_std_ratio=0.25)
    Run(parse_config(data), tmp_path / "run").execute()
    history = rows(tmp_path / "run")
    for i, row in enumerate(history):
        est = row["estimator"]
        assert {k: len(v) if isinstance(v, list) else 1 for k, v in est["grad"].items()} == LEARNABLE
        assert set(est["grad_se"]) == set(LEARNABLE)
        se = math.sqrt(sum(float(torch.tensor(v).pow(2).sum()) for v in est["grad_se"].values()))
        assert est["grad_se_norm"] == pytest.approx(se) and se > 0
        norm = math.sqrt(sum(float(torch.tensor(v).pow(2).sum()) for v in est["grad"].values()))
        assert est["grad_norm"] == pytest.approx(norm, rel=1e-5)
        assert row["step"]["kl"] <= 0.05 * (1 + 1e-6)
        # the first iteration scores its own scenes; later ones add up to two earlier batches
        assert est.get("scenes_scored", 64) == 64 * (1 + min(i, 2))


def test_resume_with_reuse_equals_the_uninterrupted_run(tmp_path: Path, cache_dir: Path, make_toy_data) -> None:
    full = settings_data(cache_dir, make_toy_data, 4, reuse_iterations=2)
    Run(parse_config(full), tmp_path / "full").execute()
    Run(parse_config(settings_data(cache_dir, make_toy_data, 2, reuse_iterations=2)), tmp_path / "cut").execute()
    Run(parse_config(full), tmp_path / "cut").execute(resume=True)
    a = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "full" / CHECKPOINT, weights_only=True)
    for k in a["psi"]:
        torch.testing.assert_close(a["psi"][k], b["psi"][k], rtol=0, atol=0)
    assert [r["estimator"]["grad"] for r in rows(tmp_path / "cut")] == [r["estimator"]["grad"]
                                                                         for r in rows(tmp_path / "full")]


def test_sobol_with_a_batch_baseline_is_refused(cache_dir: Path, make_toy_data, tmp_path: Path) -> None:
    data = settings_data(cache_dir, make_toy_data, 1, sampling="sobol", baseline="loo")
    with pytest.raises(ConfigError, match="sobol"):
        Run(parse_config(data), tmp_path / "run")
