"""autosim diagnose: estimators found through the registry, a third party's among them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from autosim_core.config import parse_config
from autosim_core.contracts import Hypergrad, HypergradProblem
from autosim_core.diagnose import diagnose
from autosim_core.estimators import linear
from autosim_core.hookspecs import hookimpl
from autosim_core.plugins import load_registry


class DoubledLinear:
    """A third-party estimator: twice the linear estimate."""

    @hookimpl
    def estimate_hypergrad(self, problem: HypergradProblem) -> Hypergrad:
        estimate = linear(problem)
        return Hypergrad({k: 2 * g for k, g in estimate.grad.items()}, estimate.diagnostics,
                         {k: 2 * e for k, e in (estimate.stderr or {}).items()})


def test_diagnose_measures_an_estimator_of_the_registry(tmp_path: Path, cache_dir: Path, make_toy_data) -> None:
    registry = load_registry()
    registry.plugins["estimators"]["doubled-linear"] = DoubledLinear()
    config = parse_config(make_toy_data(cache_dir, estimator="linear", val_count=64))
    report = diagnose(config, warmup=1, draws=2, scenes=16, reference=64, estimators=("linear", "doubled-linear"),
                      options=("mean",), registry=registry)
    single = torch.tensor(report["estimators"]["linear"]["reference"]["grad"])
    doubled = torch.tensor(report["estimators"]["doubled-linear"]["reference"]["grad"])
    # One reference batch of scenes serves every estimator: the third party's is exactly twice linear's.
    assert single.abs().sum() > 0
    torch.testing.assert_close(doubled, 2 * single)
    assert set(report["estimators"]["doubled-linear"]["options"]) == {"mean"}


def test_diagnose_names_an_estimator_that_is_not_installed(cache_dir: Path, make_toy_data) -> None:
    config = parse_config(make_toy_data(cache_dir, estimator="linear", val_count=64))
    with pytest.raises(ValueError, match="'nope' is not an installed estimator"):
        diagnose(config, warmup=0, draws=2, scenes=16, reference=64, estimators=("nope",), options=("mean",))


def test_the_pathwise_options_need_a_simulator_with_gradients(cache_dir: Path, make_toy_data) -> None:
    config = parse_config(make_toy_data(cache_dir, estimator="linear", val_count=64))
    with pytest.raises(ValueError, match=re.escape("'+pathwise' options: simulator 'toy-gaussians' implements no "
                                                   "'render_differentiable' hook")):
        diagnose(config, warmup=0, draws=2, scenes=16, reference=64, options=("sobol", "sobol+pathwise"))


def test_the_cli_writes_the_report_whole_or_not_at_all(tmp_path: Path, cache_dir: Path, make_toy_data,
                                                      monkeypatch: pytest.MonkeyPatch, full_disk: Any) -> None:
    from kill_harness import toml
    from typer.testing import CliRunner

    from autosim_core import diagnose as diagnose_module
    from autosim_core.cli import app

    monkeypatch.setattr(diagnose_module, "diagnose", lambda config, **kwargs: {"estimators": {"quadratic": {}}})
    monkeypatch.setattr(diagnose_module, "markdown", lambda report: "the report\n")
    config = tmp_path / "toy.toml"
    config.write_text(toml(make_toy_data(cache_dir)))
    out = tmp_path / "diagnose.json"
    result = CliRunner().invoke(app, ["diagnose", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) == {"estimators": {"quadratic": {}}}
    out.write_text("the last report")
    full_disk()
    result = CliRunner().invoke(app, ["diagnose", str(config), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert result.stderr == f"error: cannot write {out}: No space left on device\n"
    assert out.read_text() == "the last report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diagnose.json", "toy.toml"]
