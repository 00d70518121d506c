"""A run: one searcher driving one simulator and one task, with its folder on disk.

The run is the loop (budget, step, NaN skip, best, checkpoint, summary) over parts that each
have one job: ``checks`` (the config against the installed plugins), ``clock`` (images and
seconds), ``scenes`` (sample, render, collate), ``training`` (model, fine-tune, evaluate),
``cache`` (rendered evaluation sets) and ``rundir`` (the folder's files). A searcher sees the
run as a :class:`~autosim_core.contracts.SearchContext`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .cache import default_cache_dir
from .checks import check_run
from .clock import Clock
from .config import ConfigError, Data, RunConfig, load_config, parse_config
from .contracts import Hypergrad, HypergradProblem, Sampler, Searcher
from .executors import Executor
from .hookspecs import MetricAccumulator
from .hypergrad import Params
from .plugins import Registry, has_impl, load_registry
from .records import Batch, Example, SceneBatch
from .rundir import CHECKPOINT, CONFIG_JSON, CONFIG_TOML, PSI, SUMMARY, HistoryWriter, RunFolder
from .scenes import Scenes
from .snapshots import Snapshots, budget_fraction
from .space import ParameterSpace, Psi
from .tiles import cut_tiles
from .training import Training, ValidationPass


class NonFiniteError(RuntimeError):
    """``max_nonfinite`` steps in a row produced NaN or inf; the run stopped at its checkpoint."""


def open_run(config: str | Path | dict[str, Any], out_dir: str | Path, **kwargs: Any) -> Run:
    """A config (a TOML file or its data) parsed and checked as a :class:`Run`, in one pass.

    Every problem is reported in one :class:`ConfigError`: those of the config's own keys and,
    from the same config with its invalid keys at their defaults, those that need the installed
    plugins (unknown names, plugin settings, presets, overrides, folders). Lines of a file start
    with its path.
    """
    prefix = "" if isinstance(config, dict) else f"{config}: "
    try:
        cfg = parse_config(config) if isinstance(config, dict) else load_config(config)
    except ConfigError as exc:
        if exc.partial is None:
            raise
        try:
            Run(exc.partial, out_dir, **kwargs)
        except ConfigError as more:
            extra = [f"{prefix}{line}" for line in more.lines
                     if not any(line.split(":")[0].split(".")[0] == key for key in exc.dropped)]
            raise ConfigError(exc.lines + extra) from None
        raise
    try:
        return Run(cfg, out_dir, **kwargs)
    except ConfigError as exc:
        raise ConfigError([f"{prefix}{line}" for line in exc.lines]) from None


class Run:
    """Everything one ``autosim run`` needs, checked before any work starts."""

    def __init__(self, config: RunConfig, out_dir: str | Path, *, registry: Registry | None = None,
                 observers: tuple[Any, ...] = (), config_text: str | None = None):
        plan = check_run(config, registry or load_registry(), observers)
        self.plan = plan
        self.config, self.config_text, self.folder = config, config_text, RunFolder(out_dir)
        self.pm, self.labels, self.device = plan.pm, plan.labels, plan.device
        self.sim_settings, self.task_settings = plan.sim_settings, plan.task_settings
        self.est_settings, self.searcher_settings = plan.est_settings, plan.searcher_settings
        self.searcher_cls, self.uses_estimator, self.needs_validation = (plan.searcher_cls, plan.uses_estimator,
                                                                         plan.needs_validation)
        self.base_space, self.presets, self.space = plan.base_space, plan.presets, plan.space
        self.plugin_targets, self.simulator_version = plan.plugin_targets, plan.simulator_version
        self.simulator_target = plan.plugin_targets["simulators"]
        self.clock = Clock(lambda phase, started: self.pm.hook.on_phase(run=self, phase=phase, started=started))
        self.generator = torch.Generator().manual_seed(config.seed)
        self.scenes = Scenes(self.pm, simulator=config.simulator.name, simulator_settings=self.sim_settings,
                             task_settings=self.task_settings, executor=config.executor,
                             simulator_target=self.simulator_target, device=self.device,
                             on_retry=self.record_event, resume_hint=self.resume_hint)
        self.training = Training(self.pm, task=config.task.name, task_settings=self.task_settings,
                                 training=config.training, seed=config.seed, device=self.device, clock=self.clock,
                                 generator=self.generator)
        self.events: list[dict[str, Any]] = []
        """Faults recovered from (render and evaluation retries), in order; see ``record_event``."""
        self.history_events = False
        """Whether ``record_event`` also appends to history.jsonl (set while the run executes)."""
        self.iteration = 0
        self.snapshots = Snapshots(self.folder, config.final_training.at)
        self.test: Batch | None = None
        self.model: torch.nn.Module | None = None

    # ------------------------------------------------------------- what a searcher uses ---
    @property
    def out_dir(self) -> Path:
        return self.folder.path

    @property
    def images(self) -> int:
        return self.clock.images

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds per phase so far (a copy: the clock is their one writer)."""
        return dict(self.clock.seconds)

    @property
    def elapsed(self) -> float:
        return self.clock.elapsed

    @property
    def val(self) -> Batch | None:
        return self.training.val

    @val.setter
    def val(self, batch: Batch | None) -> None:
        self.training.val = batch

    @property
    def executor(self) -> Executor:
        return self.scenes.executor

    @property
    def simulator_samples(self) -> bool:
        return has_impl(self.pm, "sample", "simulator")

    def timed(self, phase: str) -> Any:
        return self.clock.timed(phase)

    def count_images(self, count: int) -> None:
        self.clock.count_images(count)

    def book_seconds(self, wall: float, spent: dict[str, float]) -> None:
        self.clock.book(wall, spent)

    def set_psi(self, values: Psi) -> None:
        """psi takes ``values`` (a best evaluation's, a checkpoint's) in place."""
        with torch.no_grad():
            for k, v in values.items():
                self.psi[k].copy_(v)

    def sample_scenes(self, space: ParameterSpace, psi: Psi, count: int, generator: torch.Generator,
                      ids: list[Any], sampler: Sampler | None = None) -> SceneBatch:
        return self.scenes.sample(space, psi, count, generator, ids, sampler)

    def render(self, space: ParameterSpace, psi: Psi, count: int, generator: torch.Generator,
               ids: list[Any], sampler: Sampler | None = None) -> tuple[SceneBatch, list[Example]]:
        """``count`` scenes sampled from q_psi and rendered once each, on the run's executor."""
        scenes = self.scenes.sample(space, psi, count, generator, ids, sampler)
        return scenes, self.scenes.render(scenes.records)

    def render_training(self, psi: Psi, count: int, space: ParameterSpace | None = None,
                        sampler: Sampler | None = None) -> tuple[SceneBatch, Batch]:
        """Render this iteration's training data; counts images and render seconds."""
        with self.clock.timed("render"):
            ids = list(range(self.images, self.images + count))
            scenes = self.scenes.sample(space or self.space, psi, count, self.generator, ids, sampler)
            return scenes, self._training_batch(scenes.records)

    def render_training_records(self, records: list[dict[str, Any]]) -> Batch:
        """Render training scenes already sampled (``sample_scenes``); counts images and render seconds."""
        with self.clock.timed("render"):
            return self._training_batch(records)

    def render_differentiable(self, records: list[dict[str, Any]], values: dict[str, torch.Tensor]) -> Batch:
        """Scenes rendered again in this process, their inputs carrying autograd to ``values``
        (the simulator's ``render_differentiable``); render seconds, no new images."""
        with self.clock.timed("render"):
            return self.scenes.render_differentiable(records, values)

    @property
    def differentiable_parameters(self) -> list[str]:
        """The parameters the simulator's ``render_differentiable`` differentiates (none without it)."""
        return list(self.pm.hook.differentiable_parameters(settings=self.sim_settings) or [])

    def _training_batch(self, records: list[dict[str, Any]]) -> Batch:
        examples = self.scenes.render(records)
        self.clock.count_images(len(records))
        self.pm.hook.on_render(run=self, examples=examples)
        return self.scenes.collate(examples)

    def collate(self, examples: list[Example]) -> Batch:
        return self.scenes.collate(examples)

    def log_prob(self, psi: Psi, scenes: SceneBatch, space: ParameterSpace | None = None) -> torch.Tensor:
        return self.scenes.log_prob(space or self.space, psi, scenes)

    def create_model(self) -> torch.nn.Module:
        return self.training.create_model()

    def create_model_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return self.training.create_model_optimizer(model)

    def theta(self, model: torch.nn.Module) -> Params:
        return self.training.theta(model)

    def functional_losses(self, model: torch.nn.Module, batch: Batch) -> Callable[[Params], torch.Tensor]:
        return self.training.functional_losses(model, batch)

    def hvp_operator(self, per_sample: Callable[[Params], torch.Tensor], theta: Params) -> Callable[[Params], Params]:
        return self.training.hvp_operator(per_sample, theta)

    def ggn_operator(self, model: torch.nn.Module, batch: Batch, theta: Params) -> Callable[[Params], Params]:
        return self.training.ggn_operator(model, batch, theta)

    def fine_tune(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch,
                  epochs: int | None = None, orders: list[torch.Tensor] | None = None) -> float:
        return self.training.fine_tune(model, optimizer, batch, epochs, orders)

    def epoch_orders(self, count: int, epochs: int | None = None) -> list[torch.Tensor]:
        return self.training.epoch_orders(count, epochs)

    def validation_pass(self, model: torch.nn.Module, gradient_rows: torch.Tensor | None = None) -> ValidationPass:
        return self.training.validation_pass(model, gradient_rows)

    def val_gradient(self, model: torch.nn.Module, gradient_rows: torch.Tensor | None = None) -> Params:
        return self.training.val_gradient(model, gradient_rows)

    def metric_accumulator(self) -> MetricAccumulator:
        return self.training.metric_accumulator()

    def evaluate(self, model: torch.nn.Module, batch: Batch) -> tuple[float, dict[str, float]]:
        return self.training.evaluate(model, batch)

    def validation_row(self, model: torch.nn.Module) -> dict[str, Any]:
        return self.training.validation_row(model)

    def estimate_hypergrad(self, problem: HypergradProblem) -> Hypergrad:
        return self.pm.hook.estimate_hypergrad(problem=problem, settings=self.est_settings)

    def check_memory(self) -> None:
        """Before anything renders: the training batches and the rendered evaluation sets must fit
        in the free memory (``Scenes.check_memory``)."""
        counts = {f"{key}.count": data.count for key in ("validation", "test")
                  if (data := getattr(self.config, key)) is not None and data.source == "simulator"}
        per_iteration = getattr(self.searcher_settings, "scenes_per_iteration", None)
        if isinstance(per_iteration, int):
            counts["searcher.settings.scenes_per_iteration"] = per_iteration
        self.scenes.check_memory(counts, self.space, self.space.init_psi())

    def settings_json(self) -> dict[str, Any]:
        return self.plan.settings_json()

    def resume_hint(self) -> str:
        return self.folder.resume_hint()

    def record_event(self, event: dict[str, Any]) -> None:
        """A fault the run recovered from (a render or evaluation retry): kept in ``events`` and, while the run
        executes, appended to ``history.jsonl`` as its own line (``event`` names its kind; rows of
        iterations have no ``event`` key)."""
        row = {"iteration": self.iteration, **event}
        self.events.append(row)
        what = (f"scenes {event['scenes']}" if "scenes" in event else
                f"the evaluations of points {event.get('points')}")
        logging.getLogger("autosim").warning("retrying %s (attempt %s of %s): %s", what, event.get("attempt"),
                                             event.get("retries"), event.get("reason"))
        if self.history_events:
            self.folder.append_event(row)

    def close(self) -> None:
        """Stops the executor's workers (a later render starts them again)."""
        self.scenes.close()

    def load_data(self, key: str) -> Batch | None:
        """The ``key`` set ("validation" or "test"): read from its folder, or rendered from its
        preset (once: the cache keeps it)."""
        data: Data | None = getattr(self.config, key)
        if data is None:
            return None
        if data.source == "folder":
            mask = None if data.mask is None else str(data.mask)
            examples = self.pm.hook.load_dataset(path=str(data.path), mask=mask, settings=self.task_settings)
            if not examples:
                raise ValueError(f"{key}.path: no examples found in {data.path}")
            if data.tiles is not None:
                examples = cut_tiles(examples, data.tiles, key)
        else:
            examples = self.scenes.evaluation_set(key, data, self.plan.space_for(data.preset, data.overrides, key),
                                                  self.config.cache_dir or default_cache_dir(),
                                                  self.simulator_version, self.settings_json()["simulator"]["settings"])
        return self.collate(examples)

    # ------------------------------------------------------------------------ the loop ---
    def _budget_left(self) -> bool:
        b = self.config.budget
        if b.iterations is not None and self.iteration >= b.iterations:
            return False
        if b.images is not None and self.images >= b.images:
            return False
        return not (b.seconds is not None and self.elapsed >= b.seconds)

    def _take_snapshots(self, final: bool = False) -> None:
        """Keep the psi the run hands over now (AutoSimulate's current one, a black-box searcher's best
        point, ``fixed``'s start) for every fraction of the budget reached (all left when ``final``)."""
        spent = 1.0 if final else budget_fraction(self.config.budget, self.iteration, self.images, self.elapsed)
        self.snapshots.take(spent, lambda: {
            "iteration": self.iteration, "images": self.images, "seconds": self.elapsed,
            "psi": self.space.describe(self.psi), "raw": {k: v.detach().tolist() for k, v in self.psi.items()},
            "space": self.space.with_psi(self.psi).to_dict()})

    def _checkpoint(self, searcher: Searcher, best: dict[str, Any]) -> None:
        assert self.model is not None
        self.folder.save_checkpoint({
            "iteration": self.iteration, **self.clock.state_dict(),
            "psi": {k: v.detach().clone() for k, v in self.psi.items()},
            "model": self.model.state_dict(), "model_optimizer": self.model_optimizer.state_dict(),
            "searcher": searcher.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "best": best, "nonfinite_in_row": self.nonfinite_in_row,
            "snapshots": self.snapshots.taken,
        })

    def _load_step_state(self, state: dict[str, Any], searcher: Searcher) -> None:
        """psi, the model, its optimiser and the searcher as a checkpoint holds them."""
        assert self.model is not None
        self.set_psi(state["psi"])
        self.model.load_state_dict(state["model"])
        self.model_optimizer.load_state_dict(state["model_optimizer"])
        searcher.load_state_dict(state["searcher"])

    def _restore(self, state: dict[str, Any], searcher: Searcher) -> dict[str, Any]:
        self.iteration = int(state["iteration"])
        self.clock.load_state_dict(state)
        self.nonfinite_in_row = int(state.get("nonfinite_in_row", 0))
        spent = budget_fraction(self.config.budget, self.iteration, self.images, self.clock.seconds_before)
        self.snapshots.resume(list(state.get("snapshots", [])), spent)
        self._load_step_state(state, searcher)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        return dict(state["best"])

    def _nonfinite(self, row: dict[str, Any]) -> str | None:
        """Why the step that produced ``row`` left a NaN or inf behind (None if it did not):
        in a loss, the validation scores, the hypergradient, psi or the model's parameters."""
        assert self.model is not None
        for key in ("train_loss", "val_loss", "val_metric"):
            value = row.get(key)
            if isinstance(value, int | float) and not math.isfinite(value):
                return f"{key} is {value}"
        estimator = row.get("estimator")
        grad_norm = estimator.get("grad_norm") if isinstance(estimator, dict) else None
        if isinstance(grad_norm, int | float) and not math.isfinite(grad_norm):
            return f"the hypergradient's norm is {grad_norm}"
        for name, value in self.psi.items():
            if not bool(torch.isfinite(value).all()):
                return f"psi {name!r} is not finite"
        for name, param in self.model.named_parameters():
            if not bool(torch.isfinite(param).all()):
                return f"model parameter {name!r} is not finite"
        return None

    def _skip_step(self, searcher: Searcher, row: dict[str, Any], reason: str) -> None:
        """Undo a step that produced a NaN or inf: psi, the model, its optimiser and the searcher
        go back to the last checkpoint (the state before the step); the counters and random
        streams move on, so that the next step draws new scenes. The row's scores are those of a
        discarded model (and NaN, which is not JSON): null, as in a row without scores."""
        self._load_step_state(self.folder.load_checkpoint(), searcher)
        drop_results_ahead = getattr(searcher, "drop_results_ahead", None)
        if drop_results_ahead is not None:
            drop_results_ahead()
        self.nonfinite_in_row += 1
        row.update({k: None for k in ("train_loss", "val_loss", "val_metric") if k in row})
        row.pop("val_details", None)
        row.update(skipped=f"non-finite: {reason}", psi=self.space.describe(self.psi))

    def execute(self, resume: bool = False) -> dict[str, Any]:
        """Run the searcher until the budget is spent; returns the summary it writes.

        Each iteration appends its history row (flushed to disk) and then replaces the
        checkpoint; every file is written whole or not at all, so a run killed at any moment
        resumes from its last checkpoint to the same result. The folder stays locked to this
        process until the run ends (``RunFolder.prepare``).
        """
        state = self.folder.prepare(resume, self.settings_json())
        try:
            return self._execute(state)
        finally:
            self.folder.unlock()

    def _execute(self, state: dict[str, Any] | None) -> dict[str, Any]:
        self.history_events = True
        self.folder.write_json(CONFIG_JSON, self.settings_json())
        # A run that starts from scratch writes it; one resumed from a checkpoint keeps the text
        # it started from, unless the first start died before writing it (``generate`` reads it).
        if self.config_text is not None and (state is None or not (self.out_dir / CONFIG_TOML).exists()):
            self.folder.write_text(CONFIG_TOML, self.config_text)

        setup_start = time.perf_counter()
        self.check_memory()
        self.val = self.load_data("validation")
        self.test = self.load_data("test")
        setup_seconds = time.perf_counter() - setup_start

        self.psi = self.space.init_psi()
        self.model = self.create_model()
        self.model_optimizer = self.create_model_optimizer(self.model)
        searcher: Searcher = self.searcher_cls(self, self.searcher_settings)
        best: dict[str, Any] = {}
        self.nonfinite_in_row = 0
        if state is not None:
            best = self._restore(state, searcher)
        self.clock.start()
        if state is None:
            self._take_snapshots()
            # The state before the first step: what a step with a NaN goes back to.
            self._checkpoint(searcher, best)

        max_nonfinite = self.config.max_nonfinite
        self.pm.hook.on_run_start(run=self)
        history = HistoryWriter(self.folder)
        try:
            while self._budget_left():
                self.iteration += 1
                row = {"iteration": self.iteration, **searcher.step(self.iteration)}
                reason = self._nonfinite(row)
                if reason is not None:
                    self._skip_step(searcher, row, reason)
                else:
                    self.nonfinite_in_row = 0
                row.update(images=self.images, seconds=self.elapsed,
                           **{f"seconds_{p}": s for p, s in self.seconds.items()})
                metric = row.get("val_metric")
                if reason is None and metric is not None and (not best or metric > best["val_metric"]):
                    best = {k: row[k] for k in ("iteration", "images", "seconds", "val_metric", "psi") if k in row}
                # The row goes to disk before the checkpoint: resuming drops rows past the
                # checkpoint, so a crash between the two never loses an iteration's row.
                history.append(row)
                if reason is None:
                    self._take_snapshots()
                self._checkpoint(searcher, best)
                self.pm.hook.on_iteration(run=self, row=row)
                if reason is not None and self.nonfinite_in_row >= max_nonfinite:
                    raise NonFiniteError(
                        f"{self.nonfinite_in_row} steps in a row produced NaN or inf, the last at iteration "
                        f"{self.iteration} ({reason}); psi and the model in {self.out_dir / CHECKPOINT} are "
                        f"those of the last good step (max_nonfinite = {max_nonfinite})")
        finally:
            history.close()
            close_searcher = getattr(searcher, "close", None)
            if close_searcher is not None:
                close_searcher()

        # The loop ends with the budget spent, but a last step undone for a NaN took no snapshot.
        self._take_snapshots(final=True)
        summary = self.summarize(best, setup_seconds)
        self.folder.write_json(SUMMARY, summary)
        self.pm.hook.on_run_end(run=self, summary=summary)
        return summary

    def summarize(self, best: dict[str, Any], setup_seconds: float) -> dict[str, Any]:
        assert self.model is not None
        final_psi = self.space.describe(self.psi)
        raw = {k: v.detach().tolist() for k, v in self.psi.items()}
        self.folder.write_json(PSI, {"psi": final_psi, "raw": raw,
                                            "space": self.space.with_psi(self.psi).to_dict()})
        summary: dict[str, Any] = {
            "iterations": self.iteration, "images": self.images, "seconds": self.elapsed,
            "seconds_split": dict(self.seconds), "seconds_setup": setup_seconds,
            "psi_start": self.space.describe(self.space.init_psi()), "psi": final_psi, "best": best,
        }
        val_cfg = self.config.validation
        if val_cfg is not None and val_cfg.source == "simulator":
            target = self.plan.space_for(val_cfg.preset, val_cfg.overrides, "validation")
            summary["psi_validation"] = target.describe(target.init_psi())
        if self.val is not None:
            loss, metrics = self.training.scores(self.model, self.val)
            summary["val"] = {"loss": loss, **metrics}
        if self.test is not None:
            loss, metrics = self.evaluate(self.model, self.test)
            summary["test"] = {"loss": loss, **metrics}
        return summary
