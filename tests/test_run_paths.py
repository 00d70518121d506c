"""The loop's budgets, the fixed searcher, the psi optimisers and clipping, the evaluation-set
cache key, and the errors a broken plugin or a bad command meets."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from typer.testing import CliRunner

import autosim_core.clock as clock_module
import autosim_core.run as run_module
from autosim_core import Example, Normal, ParameterSpace, hookimpl
from autosim_core.cache import cached_sets
from autosim_core.cli import app
from autosim_core.config import parse_config
from autosim_core.estimators import linear_plugin
from autosim_core.plugins import GROUPS, Registry
from autosim_core.run import Run
from autosim_core.rundir import HISTORY
from autosim_core.scenes import Scenes
from autosim_core.searchers import AutoSimulate, AutoSimulateSettings, Fixed, PsiStep
from autosim_core.toy import ToyTask, toy_task

K = 16  # scenes per iteration in these runs


def small_toy(make_toy_data, cache_dir: Path, *, budget: dict[str, Any], searcher: str = "autosimulate",
              sampling: str = "sobol") -> dict[str, Any]:
    data = make_toy_data(cache_dir, estimator="linear", val_count=40)
    data["budget"] = budget
    data["training"] = {"epochs": 1, "batch_size": K, "lr": 0.05}
    settings: dict[str, Any] = {"scenes_per_iteration": K}
    if searcher == "autosimulate":
        settings |= {"lr": 0.1, "reuse_iterations": 0, "sampling": sampling}
    data["searcher"] = {"name": searcher, "settings": settings}
    return data


def history(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / HISTORY).read_text().splitlines()]


# ------------------------------------------------------------------------------ budgets ---
@pytest.mark.parametrize(("images", "iterations"), [(2 * K, 2), (2 * K + 1, 3), (1, 1)])
def test_images_budget_stops_at_the_first_iteration_that_reaches_it(
        images: int, iterations: int, tmp_path: Path, cache_dir: Path, make_toy_data) -> None:
    """Every iteration renders K images; the loop stops once images >= the budget, so it runs
    ceil(budget / K) iterations."""
    assert iterations == math.ceil(images / K)
    config = parse_config(small_toy(make_toy_data, cache_dir, budget={"images": images}))
    summary = Run(config, tmp_path / "run").execute()
    assert summary["iterations"] == iterations
    assert summary["images"] == iterations * K
    assert [row["images"] for row in history(tmp_path / "run")] == [K * (i + 1) for i in range(iterations)]


class FakeClock:
    """time.perf_counter for the run and its clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.mark.parametrize(("seconds", "iterations"), [(30.0, 3), (29.5, 3), (30.5, 4)])
def test_seconds_budget_stops_once_the_loop_has_used_it(
        seconds: float, iterations: int, tmp_path: Path, cache_dir: Path, make_toy_data,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each iteration's render takes 10 s on a fake clock; the loop stops once elapsed >= budget."""
    clock = FakeClock()
    monkeypatch.setattr(run_module, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(clock_module, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    render = Run.render_training

    def slow_render(self: Run, *args: Any, **kwargs: Any) -> Any:
        clock.now += 10.0
        return render(self, *args, **kwargs)

    monkeypatch.setattr(Run, "render_training", slow_render)
    data = small_toy(make_toy_data, cache_dir, budget={"seconds": seconds}, searcher="fixed")
    # The validation set is rendered before the clock starts: its time is not the loop's.
    summary = Run(parse_config(data), tmp_path / "run").execute()
    assert summary["iterations"] == iterations
    assert summary["seconds"] == pytest.approx(10.0 * iterations)
    assert [row["seconds"] for row in history(tmp_path / "run")] == [10.0 * (i + 1) for i in range(iterations)]


def test_the_first_budget_reached_stops_the_run(tmp_path: Path, cache_dir: Path, make_toy_data) -> None:
    data = small_toy(make_toy_data, cache_dir, budget={"iterations": 5, "images": 2 * K}, searcher="fixed")
    assert Run(parse_config(data), tmp_path / "a").execute()["iterations"] == 2
    data = small_toy(make_toy_data, cache_dir, budget={"iterations": 2, "images": 5 * K}, searcher="fixed")
    assert Run(parse_config(data), tmp_path / "b").execute()["iterations"] == 2


# ----------------------------------------------------------------------- fixed searcher ---
def test_the_fixed_searcher_keeps_psi_and_trains_the_model(tmp_path: Path, cache_dir: Path,
                                                         make_toy_data) -> None:
    data = small_toy(make_toy_data, cache_dir, budget={"iterations": 3}, searcher="fixed")
    run = Run(parse_config(data), tmp_path / "run")
    start = {k: v.detach().clone() for k, v in run.space.init_psi().items()}
    untrained = {k: v.detach().clone() for k, v in run.create_model().state_dict().items()}
    summary = run.execute()
    assert summary["images"] == 3 * K
    assert run.psi is not None and all(torch.equal(run.psi[k], start[k]) for k in start)
    described = run.space.describe(start)
    assert all(row["psi"] == json.loads(json.dumps(described)) for row in history(tmp_path / "run"))
    assert run.model is not None
    assert any(not torch.equal(p, untrained[k]) for k, p in run.model.state_dict().items())


# ------------------------------------------------------------------------ the psi step ---
def one_coordinate_space() -> ParameterSpace:
    return ParameterSpace(x=Normal(mean=0.0, std=1.0, low=-50, high=50), y=Normal(mean=0.0, std=1.0, low=-50, high=50))


def psi_step(optimizer: str, lr: float, max_grad_norm: float | None = None) -> tuple[PsiStep, dict[str, Any]]:
    space = one_coordinate_space()
    psi = space.init_psi()
    settings = AutoSimulateSettings(optimizer=optimizer, lr=lr, max_grad_norm=max_grad_norm, min_std_ratio=0.0,
                                    min_prob_ratio=0.0)
    return PsiStep(space, psi, settings), psi


def test_sgd_psi_step_is_minus_lr_times_the_gradient() -> None:
    step, psi = psi_step("sgd", lr=0.5)
    before = {k: v.detach().clone() for k, v in psi.items()}
    grad = {"x.loc": torch.tensor(0.3), "y.loc": torch.tensor(-0.2), "x.log_std": torch.tensor(0.1),
            "y.log_std": torch.tensor(0.0)}
    step(grad)
    for k, g in grad.items():
        assert float(psi[k].detach()) == pytest.approx(float(before[k]) - 0.5 * float(g), abs=1e-7), k


def test_adam_psi_step_moves_each_coordinate_by_lr() -> None:
    """Adam's first step is lr * g / (|g| + eps): lr against the gradient's sign, whatever its size."""
    step, psi = psi_step("adam", lr=0.5)
    step({"x.loc": torch.tensor(0.3), "y.loc": torch.tensor(-0.002)})
    assert float(psi["x.loc"].detach()) == pytest.approx(-0.5, abs=1e-5)
    assert float(psi["y.loc"].detach()) == pytest.approx(0.5, abs=1e-3)


def test_max_grad_norm_rescales_a_long_hypergradient_to_that_norm() -> None:
    step, psi = psi_step("sgd", lr=1.0, max_grad_norm=0.5)
    step({"x.loc": torch.tensor(3.0), "y.loc": torch.tensor(-4.0)})  # norm 5, scaled by 0.1
    assert float(psi["x.loc"].detach()) == pytest.approx(-0.3, rel=1e-5)
    assert float(psi["y.loc"].detach()) == pytest.approx(0.4, rel=1e-5)


def test_max_grad_norm_leaves_a_short_hypergradient_alone() -> None:
    step, psi = psi_step("sgd", lr=1.0, max_grad_norm=10.0)
    step({"x.loc": torch.tensor(3.0), "y.loc": torch.tensor(-4.0)})
    assert float(psi["x.loc"].detach()) == pytest.approx(-3.0, rel=1e-6)
    assert float(psi["y.loc"].detach()) == pytest.approx(4.0, rel=1e-6)


# --------------------------------------------------------------- plugins for the errors ---
class GainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gain: float = 1.0


class CountingSimulator:
    """One Gaussian coordinate times a gain setting; counts the scenes it renders."""

    def __init__(self, drop: int = 0) -> None:
        self.rendered = 0
        self.drop = drop

    @hookimpl
    def simulator_settings_model(self) -> type[BaseModel]:
        return GainSettings

    @hookimpl
    def parameter_space(self) -> ParameterSpace:
        return ParameterSpace(x=Normal(mean=0.0, std=1.0))

    @hookimpl
    def render(self, scenes: list[dict[str, Any]], settings: GainSettings) -> list[Example]:
        self.rendered += len(scenes)
        out = [Example(image=torch.tensor([s["x"] * settings.gain, 1.0]), label=int(s["x"] > 0), scene=s)
               for s in scenes]
        return out[: len(out) - self.drop]


class NoMetricTask(ToyTask):
    @hookimpl
    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"accuracy": float((outputs.argmax(-1) == targets).float().mean())}


class FrozenTask(ToyTask):
    @hookimpl
    def create_model(self, settings: Any) -> torch.nn.Module:
        model = torch.nn.Linear(2, 2)
        model.requires_grad_(False)
        return model


def plugin_run(tmp_path: Path, out: str, *, simulator: Any = None, task: Any = None, seed: int = 1,
               count: int = 8, gain: float = 1.0, extra: dict[str, Any] | None = None) -> Run:
    plugins: dict[str, dict[str, Any]] = {k: {} for k in GROUPS}
    plugins["simulators"]["counting"] = simulator if simulator is not None else CountingSimulator()
    plugins["tasks"]["toy"] = task if task is not None else toy_task
    plugins["estimators"]["linear"] = linear_plugin
    plugins["searchers"]["autosimulate"] = AutoSimulate
    plugins["searchers"]["fixed"] = Fixed
    data = {"seed": 0, "simulator": {"name": "counting", "settings": {"gain": gain}}, "task": {"name": "toy"},
            "estimator": {"name": "linear"}, "budget": {"iterations": 1},
            "searcher": {"name": "fixed", "settings": {"scenes_per_iteration": 4}},
            "validation": {"preset": None, "count": count, "seed": seed}, "cache_dir": str(tmp_path / "cache")}
    data |= extra or {}
    return Run(parse_config(data), tmp_path / out, registry=Registry(plugins=plugins))


# -------------------------------------------------------------- evaluation-set cache key ---
def test_cache_key_follows_the_set_and_the_simulator_settings_but_not_the_rest(tmp_path: Path) -> None:
    simulator = CountingSimulator()
    base = plugin_run(tmp_path, "a", simulator=simulator).load_data("validation")
    assert base is not None and simulator.rendered == 8
    # Settings that do not shape the set: the cached one is read back, nothing is rendered.
    unrelated = {"training": {"lr": 0.5, "epochs": 3}, "budget": {"iterations": 7}, "seed": 5,
                 "searcher": {"name": "fixed", "settings": {"scenes_per_iteration": 9}}}
    again = plugin_run(tmp_path, "b", simulator=simulator, extra=unrelated).load_data("validation")
    assert simulator.rendered == 8 and again is not None and torch.equal(again.inputs, base.inputs)
    assert len(cached_sets(tmp_path / "cache")) == 1
    # Each of these changes the set, so each renders it anew under a key of its own.
    for n, change in enumerate([{"seed": 2}, {"count": 9}, {"gain": 2.0}], start=1):
        plugin_run(tmp_path, f"c{n}", simulator=simulator, **change).load_data("validation")
        assert len(cached_sets(tmp_path / "cache")) == 1 + n, change
    assert simulator.rendered == 8 + 8 + 9 + 8
    doubled = plugin_run(tmp_path, "d", simulator=simulator, gain=2.0).load_data("validation")
    assert doubled is not None and torch.allclose(doubled.inputs[:, 0], 2 * base.inputs[:, 0])


def test_cache_key_follows_the_simulator_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    simulator = CountingSimulator()
    plugin_run(tmp_path, "a", simulator=simulator).load_data("validation")
    monkeypatch.setattr(Scenes, "simulator_source", lambda self: "an edited renderer")
    plugin_run(tmp_path, "b", simulator=simulator).load_data("validation")
    assert simulator.rendered == 16 and len(cached_sets(tmp_path / "cache")) == 2


# ------------------------------------------------------------------------------- errors ---
def one_line(exc: BaseException) -> str:
    text = exc.args[0] if exc.args else str(exc)
    assert isinstance(text, str) and "\n" not in text, text
    return text


def test_a_simulator_returning_too_few_examples_is_named(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as info:
        plugin_run(tmp_path, "a", simulator=CountingSimulator(drop=1)).load_data("validation")
    assert one_line(info.value) == "simulator 'counting' returned 7 examples for 8 scenes"


def test_evaluate_without_a_metric_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeyError) as info:
        plugin_run(tmp_path, "a", task=NoMetricTask()).execute()
    assert one_line(info.value) == "task 'toy': evaluate() returned no 'metric' key"


def test_a_model_with_nothing_to_train_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        plugin_run(tmp_path, "a", task=FrozenTask()).execute()
    assert one_line(info.value) == "the task's model has no trainable parameters (all are frozen)"


def test_generate_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["generate", str(tmp_path / "no-run"), "-n", "2", "-o", str(out)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: --out: {out} is not an empty folder; choose a new one"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"



def test_training_renders_draw_from_the_runs_generator_and_sampler(tmp_path: Path, cache_dir: Path,
                                                                  make_toy_data) -> None:
    from autosim_core.searchers import sobol_sampler

    data = small_toy(make_toy_data, cache_dir, budget={"iterations": 1}, searcher="fixed")
    latents = []
    for global_seed in (1, 2):
        run = Run(parse_config(data), tmp_path / f"run{global_seed}")
        torch.manual_seed(global_seed)  # the scenes must not depend on torch's global state
        scenes, _ = run.render_training(run.space.init_psi(), 5)
        latents.append(scenes.latents)
        assert [r["id"] for r in scenes.records] == [0, 1, 2, 3, 4] and run.images == 5
    assert all(torch.equal(latents[0][k], latents[1][k]) for k in latents[0])

    used = []

    def sampler(space: Any, psi: Any, count: int, generator: torch.Generator) -> Any:
        used.append(generator)
        return sobol_sampler(space, psi, count, generator)

    scenes, batch = run.render_training(run.space.init_psi(), 3, sampler=sampler)
    assert used == [run.generator] and [r["id"] for r in scenes.records] == [5, 6, 7] and run.images == 8
    assert batch.inputs.shape[0] == 3
