"""A run: one searcher driving one simulator and one task, with its folder on disk.

The run owns what every searcher shares — rendering, fine-tuning, evaluation, the clock and
image counters, checkpoints and history — so that a searcher's ``step`` stays short.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import BaseModel, ValidationError
from torch.func import functional_call

from .cache import default_cache_dir, source_fingerprint
from .config import ConfigError, Data, RunConfig, format_validation_error, load_config, parse_config, validate_settings
from .executors import (
    ExampleCountError,
    Executor,
    RenderError,
    SimulatorRef,
    make_executor,
    plugin_target,
    ray_available,
)
from .export import TMP_SUFFIX, atomic_write
from .hookspecs import MetricAccumulator
from .hypergrad import Params, hvp_operator
from .observers import configured_observers
from .plugins import Registry, has_impl, load_registry, plugin_manager
from .records import Batch, Example, SceneBatch
from .space import ParameterSpace, Psi

PHASES = ("render", "train", "hypergrad", "eval")
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.jsonl"
CACHE_VERSION = 1
RESUMABLE_CHANGES = frozenset({"budget", "executor", "observers"})
"""Top-level config tables a resumed run may change."""

Sampler = Callable[[ParameterSpace, Psi, int, torch.Generator], SceneBatch]
"""(space, psi, count, generator) -> scenes: a sampler used instead of the ``sample`` hook."""


class Searcher(Protocol):
    """An outer search strategy (entry-point group ``autosim.searchers``).

    The class is constructed with the run and its validated settings; ``step`` performs one
    iteration (AutoSimulate) or one objective evaluation (black-box searchers) and returns the
    fields of its history row (``val_loss``, ``val_metric``, ``psi`` and anything else); the run
    adds ``iteration``, ``images`` and the ``seconds`` fields. A searcher holding workers may
    define ``close()``, which the run calls when it stops, and one that computes results ahead
    of its steps ``drop_results_ahead()``, called after a step is skipped (NaN).
    """

    settings_model: type[BaseModel] | None
    uses_estimator: bool
    """False for searchers that never call the run's estimator (default True)."""

    def __init__(self, run: Run, settings: Any) -> None: ...

    def step(self, iteration: int) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NonFiniteError(RuntimeError):
    """``max_nonfinite`` steps in a row produced NaN or inf; the run stopped at its checkpoint."""


class DamagedHistoryError(ValueError):
    """A run folder's history.jsonl cannot be matched with its checkpoint."""


def _require(pm: Any, hooks: tuple[str, ...], role: str, name: str, errors: list[str]) -> None:
    for hook in hooks:
        if not has_impl(pm, hook, role):
            errors.append(f"{role}.name: {role} {name!r} implements no {hook!r} hook")


def _labels_problem(labels: Any) -> str | None:
    """What is wrong with a simulator's declared labels, or None."""
    if not isinstance(labels, list | tuple) or not all(isinstance(n, str) and n for n in labels):
        return f"expected a list of non-empty class names, got {labels!r}"
    if not labels:
        return "an empty list (return None to declare no classes)"
    if len(set(labels)) != len(labels):
        return f"names must be distinct, got {list(labels)}"
    return None


def resolve_device(spec: str) -> torch.device:
    """``training.device`` as a torch device: "auto" is CUDA where torch sees a GPU, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{spec!r}: torch sees no CUDA device on this machine; use 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _default_settings(model: type[BaseModel] | None) -> Any:
    """A settings model's defaults (a dict where there is no model), None if it has required keys."""
    if model is None:
        return {}
    try:
        return model()
    except Exception:
        return None


def _to_device(batch: Batch, device: torch.device) -> Batch:
    targets = batch.targets.to(device) if isinstance(batch.targets, torch.Tensor) else batch.targets
    return Batch(batch.inputs.to(device), targets)


def _cat(parts: list[Any]) -> Any:
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return [x for part in parts for x in part]


def _detach(outputs: Any) -> Any:
    """A model's outputs cut from the graph: a tensor, or a list/tuple/dict of them."""
    if isinstance(outputs, torch.Tensor):
        return outputs.detach()
    if isinstance(outputs, list | tuple):
        return type(outputs)(_detach(o) for o in outputs)
    if isinstance(outputs, dict):
        return {k: _detach(v) for k, v in outputs.items()}
    return outputs


def _strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None: JSON has no NaN, and a
    history row must read back in any JSON reader."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    try:  # a tensor or numpy scalar: a float, as json.dumps(default=float) would write it
        number = float(value)
    except (TypeError, ValueError):
        return value
    return number if math.isfinite(number) else None


def _state_versions(model: torch.nn.Module) -> tuple[int, ...]:
    """Changes whenever a parameter or buffer of ``model`` is written in place (an optimiser
    step, load_state_dict): the key under which a validation pass stays valid."""
    return tuple(t._version for t in (*model.parameters(), *model.buffers()))


@dataclass
class ValidationPass:
    """One pass over an evaluation set under autograd: what the no-grad evaluation reports
    (mean loss, the task's metrics) and the gradient of the mean loss, from the same forward."""

    loss: float
    metrics: dict[str, float]
    gradient: Params


class ConcatenatingAccumulator:
    """The default ``MetricAccumulator``: keeps every chunk's outputs and targets and calls the
    task's whole-set ``metrics_fn`` on their concatenation."""

    def __init__(self, metrics_fn: Callable[[Any, Any], dict[str, Any]]):
        self.metrics_fn = metrics_fn
        self.outputs: list[Any] = []
        self.targets: list[Any] = []

    def update(self, outputs: Any, targets: Any) -> None:
        self.outputs.append(outputs)
        self.targets.append(targets)

    def compute(self) -> dict[str, Any]:
        return self.metrics_fn(_cat(self.outputs), _cat(self.targets))


def validation_pass(model: torch.nn.Module, batch: Batch, loss_fn: Callable[[Any, Any], torch.Tensor],
                    metrics_fn: Callable[[Any, Any], dict[str, Any]], chunk_size: int,
                    evaluation: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                    accumulator: MetricAccumulator | None = None) -> ValidationPass:
    """Mean loss, metrics and grad_theta of the mean loss over ``batch`` in one forward pass.

    theta are the model's trainable parameters (frozen ones get no gradient). The metrics come
    from the detached outputs, so they equal a no-grad evaluation's: chunk by chunk through
    ``accumulator`` where the task has one, else ``metrics_fn`` on the concatenated outputs.
    ``evaluation`` wraps the work a no-grad evaluation would do as well (forward, losses,
    metrics): a run books it as evaluation time, and only the backward passes as the gradient's
    own cost.
    """
    model.eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    n = len(batch)
    metrics_acc = accumulator if accumulator is not None else ConcatenatingAccumulator(metrics_fn)
    losses = []
    for chunk in batch.chunks(chunk_size):
        with torch.enable_grad():
            with evaluation():
                out = model(chunk.inputs)
                chunk_losses = loss_fn(out, chunk.targets)
                with torch.no_grad():
                    metrics_acc.update(_detach(out), chunk.targets)
            grads = torch.autograd.grad(chunk_losses.sum() / n, params, allow_unused=True)
        for acc, g in zip(total, grads, strict=True):
            if g is not None:
                acc += g
        losses.append(chunk_losses.detach())
    with evaluation(), torch.no_grad():
        metrics = metrics_acc.compute()
        loss = float(torch.cat(losses).mean())
    return ValidationPass(loss, {k: float(v) for k, v in metrics.items()}, dict(zip(names, total, strict=True)))


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
        self.config = config
        self.out_dir = Path(out_dir)
        self.config_text = config_text
        registry = registry or load_registry()
        errors: list[str] = []

        def lookup(kind: str, key: str, name: str) -> Any:
            try:
                return registry.get(kind, name)
            except LookupError as exc:
                errors.append(f"{key}.name: {exc}")
                return None

        # Every check runs even when an earlier one failed, so that one pass reports every
        # problem of a config; a check that needs a plugin or settings that failed is skipped.
        sim = lookup("simulators", "simulator", config.simulator.name)
        task = lookup("tasks", "task", config.task.name)
        est = lookup("estimators", "estimator", config.estimator.name)
        searcher_cls = lookup("searchers", "searcher", config.searcher.name)
        observers = (*observers, *configured_observers(config.observers, registry, errors))

        self.pm = plugin_manager(*((role, p) for role, p in (("simulator", sim), ("task", task), ("estimator", est))
                                   if p is not None),
                                 *((f"observer-{i}", o) for i, o in enumerate(observers)))
        if sim is not None:
            _require(self.pm, ("parameter_space", "render"), "simulator", config.simulator.name, errors)
        if task is not None:
            _require(self.pm, ("create_model", "collate", "loss", "evaluate"), "task", config.task.name, errors)
        if est is not None:
            _require(self.pm, ("estimate_hypergrad",), "estimator", config.estimator.name, errors)
        hook = self.pm.hook

        def settings(found: Any, model: type[BaseModel] | None, table: dict[str, Any], prefix: str) -> Any:
            if found is None:
                return None
            try:
                return validate_settings(model, table, prefix)
            except ConfigError as exc:
                errors.extend(exc.lines)
                return None

        self.sim_settings = settings(sim, hook.simulator_settings_model(), config.simulator.settings,
                                     "simulator.settings")
        self.task_settings = settings(task, hook.task_settings_model(), config.task.settings, "task.settings")
        self.est_settings = settings(est, hook.estimator_settings_model(), config.estimator.settings,
                                     "estimator.settings")
        self.searcher_settings = settings(searcher_cls, getattr(searcher_cls, "settings_model", None),
                                          config.searcher.settings, "searcher.settings")
        # The labels need the simulator and its settings (the task's are checked against them).
        self.labels = self._resolve_labels(errors) if sim is not None and self.sim_settings is not None else None

        self.presets: dict[str, dict[str, dict[str, Any]]] = {}
        sim_usable = sim is not None and has_impl(self.pm, "parameter_space", "simulator")
        sim_settings = self.sim_settings
        if sim_usable and sim_settings is None:
            # Invalid settings (reported above): the space under the defaults still lets the
            # presets and overrides be checked, where the settings model has defaults.
            sim_settings = _default_settings(hook.simulator_settings_model())
            sim_usable = sim_settings is not None
        if sim_usable:
            self.base_space: ParameterSpace = hook.parameter_space(settings=sim_settings)
            self.presets = hook.presets(settings=sim_settings) or {}
            self.space = self._space(config.simulator.start, config.simulator.overrides, "simulator", errors)
        for key in ("validation", "test"):
            data: Data | None = getattr(config, key)
            if data is None:
                continue
            if data.source == "simulator":
                if sim_usable:
                    self._space(data.preset, data.overrides, key, errors)
                continue
            if task is not None and not has_impl(self.pm, "load_dataset", "task"):
                errors.append(f"{key}.source: task {config.task.name!r} cannot load folders "
                              "(no 'load_dataset' hook); allowed: 'simulator'")
            if data.path is not None and not data.path.is_dir():
                errors.append(f"{key}.path: {str(data.path)!r} is not a folder")
        self.uses_estimator = bool(getattr(searcher_cls, "uses_estimator", True))
        searcher_needs_validation = bool(getattr(searcher_cls, "requires_validation", False))
        estimator_needs_validation = est is not None and self.est_settings is not None and bool(
            hook.needs_validation(settings=self.est_settings))
        self.needs_validation = searcher_needs_validation or (self.uses_estimator and estimator_needs_validation)
        if self.needs_validation and config.validation is None:
            if searcher_needs_validation:
                errors.append(f"validation: required by the {config.searcher.name!r} searcher "
                              "(its reward is the validation metric; add a [validation] table)")
            else:
                errors.append(f"validation: required by the {config.estimator.name!r} estimator "
                              "(add a [validation] table, or use estimator 'no-val')")
        missing = getattr(searcher_cls, "missing_requirements", lambda: [])()
        if missing:
            errors.append(f"searcher.name: {config.searcher.name!r} needs {', '.join(missing)} "
                          "(pip install 'autosim-core[baselines]')")
        try:
            resolve_device(config.training.device)
        except ValueError as exc:
            errors.append(f"training.device: {exc}")
        if config.executor.kind == "ray" and not ray_available():
            errors.append("executor.kind: 'ray' needs Ray, which is not installed (pip install 'autosim-core[ray]')")
        if errors:
            raise ConfigError(errors)

        self.device = resolve_device(config.training.device)
        self._executor: Executor | None = None
        self.plugin_targets = {kind: registry.targets[kind].get(name) for kind, name in (
            ("simulators", config.simulator.name), ("tasks", config.task.name),
            ("estimators", config.estimator.name), ("searchers", config.searcher.name))}
        """Where worker processes import this run's plugins (None: not from an entry point)."""
        self.simulator_target = self.plugin_targets["simulators"]
        self.events: list[dict[str, Any]] = []
        """Faults recovered from (render retries), in order; see ``record_event``."""
        self.history_events = False
        """Whether ``record_event`` also appends to history.jsonl (set while the run executes)."""
        self.searcher_cls = searcher_cls
        self.simulator_version = registry.versions["simulators"].get(config.simulator.name, "")
        self._simulator_source: str | None = None
        self.generator = torch.Generator().manual_seed(config.seed)
        self.images = 0
        self.iteration = 0
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.seconds_before = 0.0
        self._clock_start = time.perf_counter()
        self.val: Batch | None = None
        self.test: Batch | None = None
        self.model: torch.nn.Module | None = None
        self._last_validation: tuple[torch.nn.Module, tuple[int, ...], float, dict[str, float]] | None = None
        self._val_pass: tuple[torch.nn.Module, tuple[int, ...], ValidationPass] | None = None
        self._open_phases: list[float] = []

    # -------------------------------------------------------------------- configuration ---
    def _resolve_labels(self, errors: list[str]) -> list[str] | None:
        """The simulator's declared object classes (``labels`` hook), handed to the task's
        ``apply_labels`` hook, whose answer replaces the task's settings."""
        name = self.config.simulator.name
        declared = self.pm.hook.labels(settings=self.sim_settings)
        if declared is None:
            return None
        if self.task_settings is None:  # invalid [task.settings], reported already
            return list(declared)
        problem = _labels_problem(declared)
        if problem:
            errors.append(f"simulator.name: simulator {name!r} declares bad labels: {problem}")
            return None
        labels = list(declared)
        try:
            adapted = self.pm.hook.apply_labels(settings=self.task_settings, labels=list(labels))
        except ValidationError as exc:
            errors.extend(f"{line} (with the labels simulator {name!r} declares: {labels})"
                          for line in format_validation_error(exc, "task.settings"))
            return labels
        except ValueError as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            errors.append(f"task.settings: {message} (with the labels simulator {name!r} declares: {labels})")
            return labels
        if adapted is not None:
            self.task_settings = adapted
        return labels

    def _space(self, preset: str | None, overrides: dict[str, dict[str, Any]], key: str,
               errors: list[str]) -> ParameterSpace:
        space = self.base_space
        if preset is not None:
            if preset not in self.presets:
                allowed = ", ".join(repr(p) for p in self.presets) or "none (the simulator declares no presets)"
                field = "start" if key == "simulator" else "preset"
                errors.append(f"{key}.{field}: unknown preset {preset!r}; allowed: {allowed}")
                return space
            space = space.override(self.presets[preset])
        try:
            return space.override(overrides) if overrides else space
        except (KeyError, TypeError, ValueError) as exc:
            message = str(exc.args[0]) if exc.args else str(exc)
            errors.append(f"{key}.overrides.{message}" if isinstance(exc, ValueError)
                          else f"{key}.overrides: {message}")
            return space

    def settings_json(self) -> dict[str, Any]:
        def dump(s: Any) -> Any:
            return s.model_dump(mode="json") if isinstance(s, BaseModel) else s

        resolved = self.config.model_dump(mode="json")
        resolved["simulator"]["settings"] = dump(self.sim_settings)
        resolved["task"]["settings"] = dump(self.task_settings)
        resolved["estimator"]["settings"] = dump(self.est_settings)
        resolved["searcher"]["settings"] = dump(self.searcher_settings)
        resolved["space"] = self.space.to_dict()
        if not self.uses_estimator:
            resolved["estimator"] = None
        return resolved

    # ------------------------------------------------------------------------ the clock ---
    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Books the block's seconds to ``phase``. A phase timed inside another keeps its own
        seconds and the outer one gets the rest, so the phases still add up to the wall time."""
        start = time.perf_counter()
        self._open_phases.append(0.0)
        self.pm.hook.on_phase(run=self, phase=phase, started=True)
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            nested = self._open_phases.pop()
            self.seconds[phase] += seconds - nested
            if self._open_phases:
                self._open_phases[-1] += seconds
            self.pm.hook.on_phase(run=self, phase=phase, started=False)

    @property
    def elapsed(self) -> float:
        return self.seconds_before + (time.perf_counter() - self._clock_start)

    # ------------------------------------------------------------------------ rendering ---
    def render(self, space: ParameterSpace, psi: Psi, count: int, generator: torch.Generator,
               ids: list[Any], sampler: Sampler | None = None) -> tuple[SceneBatch, list[Example]]:
        """Sample ``count`` scenes from q_psi (by the simulator's ``sample`` hook unless a
        ``sampler`` is given) and render each once, on the run's executor."""
        scenes = self.sample_scenes(space, psi, count, generator, ids, sampler)
        return scenes, self.render_records(scenes.records)

    def sample_scenes(self, space: ParameterSpace, psi: Psi, count: int, generator: torch.Generator,
                      ids: list[Any], sampler: Sampler | None = None) -> SceneBatch:
        """``count`` scenes from q_psi, each record given its ``id`` and render ``seed``.

        Scenes and their render seeds are drawn here, in the run's process, so the images do
        not depend on the executor or on which worker renders which scene.
        """
        scenes: SceneBatch = (sampler(space, psi, count, generator) if sampler is not None else
                              self.pm.hook.sample(space=space, psi=psi, count=count, generator=generator))
        seeds = torch.randint(0, 2**31 - 1, (len(scenes),), generator=generator).tolist()
        for record, scene_id, seed in zip(scenes.records, ids, seeds, strict=True):
            record["id"] = scene_id
            record["seed"] = seed
        return scenes

    def render_records(self, records: list[dict[str, Any]]) -> list[Example]:
        """Render sampled scene records on the run's executor (retrying failed workers)."""
        try:
            return self.executor.render(records, self.simulator_ref(), self._render_here, on_retry=self.record_event)
        except RenderError as exc:
            raise RenderError(f"{exc}; {self.resume_hint()}", exc.scene, exc.attempts, exc.reason) from exc.__cause__
        except ExampleCountError as exc:
            raise RuntimeError(f"simulator {self.config.simulator.name!r} returned {exc.returned} examples for "
                               f"{exc.scenes} scenes") from None

    def _render_here(self, records: list[dict[str, Any]]) -> list[Example]:
        return self.pm.hook.render(scenes=records, settings=self.sim_settings)

    @property
    def executor(self) -> Executor:
        """Where scenes are rendered (``[executor]``); started on first use."""
        if self._executor is None:
            self._executor = make_executor(self.config.executor)
        return self._executor

    def simulator_ref(self) -> SimulatorRef | None:
        """How a worker process imports this run's simulator (None for the inline executor)."""
        if self.config.executor.kind == "inline":
            return None
        name = self.config.simulator.name
        target = self.simulator_target or plugin_target(self.pm.get_plugin("simulator"))
        if target is None:
            raise ValueError(f"executor.kind: simulator {name!r} cannot be imported by worker processes "
                             "(it is no module-level object); use kind = 'inline'")
        settings = self.sim_settings
        data = settings.model_dump(mode="json") if isinstance(settings, BaseModel) else settings
        return SimulatorRef(name, target, data, tuple(sys.path))

    def resume_hint(self) -> str:
        checkpoint = self.out_dir / CHECKPOINT
        if checkpoint.exists():
            return (f"the run stopped; its last checkpoint is {checkpoint}: continue it with "
                    f"`autosim run CONFIG --out {self.out_dir} --resume`")
        return f"the run stopped before its first checkpoint ({self.out_dir})"

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
            with (self.out_dir / HISTORY).open("a") as history:
                history.write(json.dumps(row, default=str) + "\n")

    def close(self) -> None:
        """Stops the executor's workers (a later render starts them again)."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def render_training(self, psi: Psi, count: int, space: ParameterSpace | None = None,
                        sampler: Sampler | None = None) -> tuple[SceneBatch, Batch]:
        """Render this iteration's training data; counts images and render seconds."""
        with self.timed("render"):
            ids = list(range(self.images, self.images + count))
            scenes = self.sample_scenes(space or self.space, psi, count, self.generator, ids, sampler)
            return scenes, self._training_batch(scenes.records)

    def render_training_records(self, records: list[dict[str, Any]]) -> Batch:
        """Render training scenes already sampled (``sample_scenes``); counts images and render seconds."""
        with self.timed("render"):
            return self._training_batch(records)

    def _training_batch(self, records: list[dict[str, Any]]) -> Batch:
        examples = self.render_records(records)
        self.images += len(records)
        self.pm.hook.on_render(run=self, examples=examples)
        return self.collate(examples)

    def collate(self, examples: list[Example]) -> Batch:
        return _to_device(self.pm.hook.collate(examples=examples, settings=self.task_settings), self.device)

    def log_prob(self, psi: Psi, scenes: SceneBatch, space: ParameterSpace | None = None) -> torch.Tensor:
        return self.pm.hook.log_prob(space=space or self.space, psi=psi, scenes=scenes)

    # ------------------------------------------------------------------ evaluation sets ---
    def _cache_dir(self) -> Path:
        if self.config.cache_dir is not None:
            return self.config.cache_dir
        return default_cache_dir()

    def simulator_source(self) -> str:
        """A hash of the simulator's source (``autosim_core.cache.source_fingerprint``): part
        of the cache key, so that an edited renderer never meets the sets its old code rendered."""
        if self._simulator_source is None:
            plugin = self.pm.get_plugin("simulator")
            functions = [impl.function for caller in (self.pm.get_hookcallers(plugin) or [])
                         for impl in caller.get_hookimpls() if impl.plugin_name == "simulator"]
            self._simulator_source = source_fingerprint(plugin, functions)
        return self._simulator_source

    def load_data(self, key: str) -> Batch | None:
        data: Data | None = getattr(self.config, key)
        if data is None:
            return None
        if data.source == "folder":
            examples = self.pm.hook.load_dataset(path=str(data.path), settings=self.task_settings)
            if not examples:
                raise ValueError(f"{key}.path: no examples found in {data.path}")
            return self.collate(examples)
        space = self._space(data.preset, data.overrides, key, [])
        settings = self.settings_json()["simulator"]["settings"]
        # The simulator's distribution, version and source are part of the key: an upgraded
        # or edited renderer must not be scored against sets its previous code rendered.
        fingerprint = json.dumps({"v": CACHE_VERSION, "simulator": self.config.simulator.name,
                                  "simulator_version": self.simulator_version,
                                  "simulator_source": self.simulator_source(),
                                  "settings": settings, "space": space.to_dict(),
                                  "count": data.count, "seed": data.seed}, sort_keys=True, default=str)
        digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:20]
        path = self._cache_dir() / f"{self.config.simulator.name}-{key}-{digest}.pt"
        if path.exists():
            stored = torch.load(path, weights_only=True)
            examples = [Example.from_dict(d) for d in stored["examples"]]
        else:
            generator = torch.Generator().manual_seed(data.seed)
            ids = [f"{key}-{i}" for i in range(data.count)]
            _, examples = self.render(space, space.init_psi(), data.count, generator, ids)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({"fingerprint": fingerprint, "examples": [e.to_dict() for e in examples]}, tmp)
            os.replace(tmp, path)
        return self.collate(examples)

    # ----------------------------------------------------------------------------- model ---
    def create_model(self) -> torch.nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(self.config.seed)
            model = self.pm.hook.create_model(settings=self.task_settings)
        return model.to(self.device)

    def create_model_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        t = self.config.training
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the task's model has no trainable parameters (all are frozen)")
        if t.optimizer == "adam":
            return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    def theta(self, model: torch.nn.Module) -> Params:
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def losses(self, outputs: Any, targets: Any) -> torch.Tensor:
        return self.pm.hook.loss(outputs=outputs, targets=targets, settings=self.task_settings)

    def functional_losses(self, model: torch.nn.Module, batch: Batch) -> Callable[[Params], torch.Tensor]:
        """theta -> per-sample losses of ``batch``, with frozen parameters and buffers fixed."""
        fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        fixed.update(dict(model.named_buffers()))

        def per_sample(theta: Params) -> torch.Tensor:
            outputs = functional_call(model, {**fixed, **theta}, (batch.inputs,))
            return self.losses(outputs, batch.targets)

        return per_sample

    def hvp_operator(self, per_sample: Callable[[Params], torch.Tensor], theta: Params) -> Callable[[Params], Params]:
        """v -> H v of the mean of ``per_sample`` at ``theta``: the task's ``hvp`` hook where it
        has one, otherwise the core's, which builds the gradient's graph once for all products."""
        def mean_loss(th: Params) -> torch.Tensor:
            return per_sample(th).mean()

        if has_impl(self.pm, "hvp", "task"):
            return lambda v: self.pm.hook.hvp(loss_fn=mean_loss, params=theta, vector=v)
        return hvp_operator(mean_loss, theta)

    def fine_tune(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch,
                  epochs: int | None = None, orders: list[torch.Tensor] | None = None) -> float:
        """epsilon epochs of minibatch training on ``batch``; returns the last epoch's mean loss.

        Each epoch visits the examples in a random order drawn from the run's generator, or in
        the given ``orders`` (one per epoch; see ``epoch_orders``)."""
        t = self.config.training
        model.train()
        last: list[float] = []
        with self.timed("train"):
            for epoch in range(len(orders) if orders is not None else epochs or t.epochs):
                last = []
                order = orders[epoch] if orders is not None else torch.randperm(len(batch), generator=self.generator)
                for start in range(0, len(batch), t.batch_size):
                    minibatch = batch.select(order[start:start + t.batch_size])
                    last.append(self.pm.hook.train_step(model=model, batch=minibatch, optimizer=optimizer,
                                                        loss_fn=self.losses, settings=self.task_settings))
        return sum(last) / max(len(last), 1)

    def epoch_orders(self, count: int, epochs: int | None = None) -> list[torch.Tensor]:
        """The orders ``fine_tune`` would draw for ``epochs`` epochs on ``count`` examples, drawn
        now: training elsewhere (a worker) with them trains as this process would have."""
        return [torch.randperm(count, generator=self.generator) for _ in range(epochs or self.config.training.epochs)]

    def validation_pass(self, model: torch.nn.Module) -> ValidationPass:
        """Loss, metrics and gradient on the validation set at the model's current theta.

        One forward pass serves the validation gradient and the validation scores of the same
        model: the result is kept while no parameter or buffer of the model changes, and
        ``validation_row`` reuses it. The forward pass and the metrics are booked to "eval",
        which the scores would have cost anyway; the backward pass to the enclosing phase.
        """
        assert self.val is not None
        cached = self._val_pass
        if cached is not None and cached[0] is model and cached[1] == _state_versions(model):
            return cached[2]
        result = validation_pass(model, self.val, self.losses, self._metrics, self.config.training.eval_batch_size,
                                 lambda: self.timed("eval"), self.metric_accumulator())
        if "metric" not in result.metrics:
            raise KeyError(f"task {self.config.task.name!r}: evaluate() returned no 'metric' key")
        self._val_pass = (model, _state_versions(model), result)
        return result

    def val_gradient(self, model: torch.nn.Module) -> Params:
        """grad_theta of the mean validation loss, accumulated over chunks."""
        return self.validation_pass(model).gradient

    def _metrics(self, outputs: Any, targets: Any) -> dict[str, Any]:
        return self.pm.hook.evaluate(outputs=outputs, targets=targets, settings=self.task_settings)

    def metric_accumulator(self) -> MetricAccumulator:
        """An empty accumulator of the task's metrics: the task's own (``metric_accumulator``
        hook), which keeps only what its metric needs, or the core's, which concatenates."""
        own = self.pm.hook.metric_accumulator(settings=self.task_settings)
        return own if own is not None else ConcatenatingAccumulator(self._metrics)

    def evaluate(self, model: torch.nn.Module, batch: Batch) -> tuple[float, dict[str, float]]:
        """Mean loss and the task's metrics on a whole evaluation set, chunk by chunk."""
        model.eval()
        accumulator = self.metric_accumulator()
        losses = []
        with torch.no_grad():
            for chunk in batch.chunks(self.config.training.eval_batch_size):
                out = model(chunk.inputs)
                losses.append(self.losses(out, chunk.targets))
                accumulator.update(out, chunk.targets)
            metrics = accumulator.compute()
        if "metric" not in metrics:
            raise KeyError(f"task {self.config.task.name!r}: evaluate() returned no 'metric' key")
        return float(torch.cat(losses).mean()), {k: float(v) for k, v in metrics.items()}

    def validation_row(self, model: torch.nn.Module) -> dict[str, Any]:
        """``val_loss``, ``val_metric`` and ``val_details`` of a history row (None without a set)."""
        if self.val is None:
            return {"val_loss": None, "val_metric": None}
        cached = self._val_pass
        if cached is not None and cached[0] is model and cached[1] == _state_versions(model):
            val_loss, metrics = cached[2].loss, dict(cached[2].metrics)
        else:
            with self.timed("eval"):
                val_loss, metrics = self.evaluate(model, self.val)
        self._last_validation = (model, _state_versions(model), val_loss, dict(metrics))
        return {"val_loss": val_loss, "val_metric": metrics.pop("metric"), "val_details": metrics}

    # ------------------------------------------------------------------------ the loop ---
    def _budget_left(self) -> bool:
        b = self.config.budget
        if b.iterations is not None and self.iteration >= b.iterations:
            return False
        if b.images is not None and self.images >= b.images:
            return False
        return not (b.seconds is not None and self.elapsed >= b.seconds)

    def _prepare_folder(self, resume: bool) -> dict[str, Any] | None:
        """The checkpoint to resume from (None: start from scratch), with the folder made ready.

        A run that has written ``config.json`` but no checkpoint yet (it died during set-up)
        resumes from scratch, which gives the same run. Resuming also drops the history rows
        past the checkpoint (and a row torn by a kill), so that the iterations redone from the
        checkpoint are logged once.
        """
        ckpt = self.out_dir / CHECKPOINT
        if resume:
            if not ckpt.exists() and not (self.out_dir / "config.json").exists():
                raise FileNotFoundError(f"--resume: no run to resume in {self.out_dir} (no {CHECKPOINT}, "
                                        "no config.json); start it without --resume")
            self._check_same_config()
            for leftover in self.out_dir.glob(f".*{TMP_SUFFIX}"):  # files a kill left half-written
                leftover.unlink()
            state = torch.load(ckpt, weights_only=True) if ckpt.exists() else None
            self._truncate_history(int(state["iteration"]) if state is not None else 0, started=state is not None)
            return state
        if (self.out_dir / HISTORY).exists() or ckpt.exists():
            raise FileExistsError(f"{self.out_dir} already holds a run; pass --resume to continue it "
                                  "or choose another --out")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return None

    def _truncate_history(self, iteration: int, started: bool = True) -> None:
        """Keep the history rows of iterations 1..``iteration`` (those the checkpoint includes).

        Rows are written before their checkpoint, so every checkpointed iteration has its row;
        the rows after it belong to iterations the resumed run does again. A kill during a
        write can leave the last line torn: it is dropped like any row past the checkpoint.
        Event lines (render retries, ``event`` key) carry the iteration they happened in and
        follow the same rule; those of set-up (iteration 0) go when set-up is done again
        (``started`` False: no checkpoint yet).
        """
        path = self.out_dir / HISTORY
        if not path.exists():
            return
        text = path.read_text()
        lines = text.split("\n")
        kept: list[str] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                if number == len(lines):  # the last line, without its newline: torn by a kill
                    break
                raise DamagedHistoryError(f"{path}: line {number} is not a JSON row; the history is damaged"
                                          ) from None
            if int(row["iteration"]) > iteration:
                continue
            if "event" in row and not started:  # a retry during a set-up that is done again
                continue
            kept.append(line)
        found = [row["iteration"] for row in map(json.loads, kept) if "event" not in row]
        if found != list(range(1, iteration + 1)):
            raise DamagedHistoryError(f"{path}: rows of iterations {found} do not match the checkpoint's "
                                      f"1..{iteration}; the history is damaged")
        new_text = "".join(line + "\n" for line in kept)
        if new_text != text:
            atomic_write(path, lambda f: f.write(new_text.encode()))

    def _check_same_config(self) -> None:
        """A run resumes only under the config it started with; its budget may grow, and where it
        renders and what watches it (``RESUMABLE_CHANGES``) may change, as they change no result."""
        stored_path = self.out_dir / "config.json"
        if not stored_path.exists():
            return
        stored = json.loads(stored_path.read_text())
        current = json.loads(json.dumps(self.settings_json(), default=str))
        # A top-level key added to the config since the run started is the same when the run
        # uses its default (a folder written before ``max_nonfinite`` existed resumes with 3).
        for key, field in RunConfig.model_fields.items():
            if key not in stored and key in current and not field.is_required() and \
                    current[key] == json.loads(json.dumps(field.get_default(call_default_factory=True), default=str)):
                stored[key] = current[key]
        changed = sorted(k for k in set(stored) | set(current)
                         if k not in RESUMABLE_CHANGES and stored.get(k) != current.get(k))
        if changed:
            raise FileExistsError(f"--resume: the config differs from the one {self.out_dir} was started with "
                                  f"(in: {', '.join(changed)}); only [budget], [executor] and [observers] may change")

    def _write_json(self, name: str, data: Any) -> None:
        text = json.dumps(data, indent=2, default=str) + "\n"
        atomic_write(self.out_dir / name, lambda f: f.write(text.encode()))

    def _checkpoint(self, searcher: Searcher, optimizer: torch.optim.Optimizer, best: dict[str, Any]) -> None:
        assert self.model is not None
        state = {
            "iteration": self.iteration, "images": self.images, "seconds": dict(self.seconds),
            "elapsed": self.elapsed, "psi": {k: v.detach().clone() for k, v in self.psi.items()},
            "model": self.model.state_dict(), "model_optimizer": optimizer.state_dict(),
            "searcher": searcher.state_dict(), "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "best": best, "nonfinite_in_row": self.nonfinite_in_row,
        }
        atomic_write(self.out_dir / CHECKPOINT, lambda f: torch.save(state, f))

    def _load_step_state(self, state: dict[str, Any], searcher: Searcher, optimizer: torch.optim.Optimizer) -> None:
        """psi, the model, its optimiser and the searcher as a checkpoint holds them."""
        assert self.model is not None
        with torch.no_grad():
            for k, v in state["psi"].items():
                self.psi[k].copy_(v)
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["model_optimizer"])
        searcher.load_state_dict(state["searcher"])

    def _restore(self, state: dict[str, Any], searcher: Searcher, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        self.iteration = int(state["iteration"])
        self.images = int(state["images"])
        self.seconds = {k: float(v) for k, v in state["seconds"].items()}
        self.seconds_before = float(state["elapsed"])
        self.nonfinite_in_row = int(state.get("nonfinite_in_row", 0))
        self._load_step_state(state, searcher, optimizer)
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

    def _skip_step(self, searcher: Searcher, optimizer: torch.optim.Optimizer) -> None:
        """Undo a step that produced a NaN or inf: psi, the model, its optimiser and the searcher
        go back to the last checkpoint (the state before the step); the counters and random
        streams move on, so that the next step draws new scenes."""
        state = torch.load(self.out_dir / CHECKPOINT, weights_only=True)
        self._load_step_state(state, searcher, optimizer)
        drop_results_ahead = getattr(searcher, "drop_results_ahead", None)
        if drop_results_ahead is not None:
            drop_results_ahead()
        self.nonfinite_in_row += 1

    def execute(self, resume: bool = False) -> dict[str, Any]:
        """Run the searcher until the budget is spent; returns the summary it writes.

        Each iteration appends its history row (flushed to disk) and then replaces the
        checkpoint; every file is written whole or not at all (``atomic_write``), so a run
        killed at any moment resumes from its last checkpoint to the same result.
        """
        state = self._prepare_folder(resume)
        self.history_events = True
        self._write_json("config.json", self.settings_json())
        # On resume too if the first start died before writing it (``generate`` reads it).
        if self.config_text is not None and (not resume or not (self.out_dir / "config.toml").exists()):
            text = self.config_text
            atomic_write(self.out_dir / "config.toml", lambda f: f.write(text.encode()))

        setup_start = time.perf_counter()
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
            best = self._restore(state, searcher, self.model_optimizer)
        self._clock_start = time.perf_counter()
        if state is None:
            # The state before the first step: what a step with a NaN goes back to.
            self._checkpoint(searcher, self.model_optimizer, best)

        max_nonfinite = self.config.max_nonfinite
        self.pm.hook.on_run_start(run=self)
        history = (self.out_dir / HISTORY).open("a")
        try:
            while self._budget_left():
                self.iteration += 1
                row = {"iteration": self.iteration, **searcher.step(self.iteration)}
                reason = self._nonfinite(row)
                if reason is not None:
                    self._skip_step(searcher, self.model_optimizer)
                    # The undone step's scores are those of a discarded model (and NaN, which is not
                    # JSON): null, as in a row without scores.
                    row.update({k: None for k in ("train_loss", "val_loss", "val_metric") if k in row})
                    row.pop("val_details", None)
                    row.update(skipped=f"non-finite: {reason}", psi=self.space.describe(self.psi))
                else:
                    self.nonfinite_in_row = 0
                row.update(images=self.images, seconds=self.elapsed,
                           **{f"seconds_{p}": s for p, s in self.seconds.items()})
                metric = row.get("val_metric")
                if reason is None and metric is not None and (not best or metric > best["val_metric"]):
                    best = {k: row[k] for k in ("iteration", "images", "seconds", "val_metric", "psi") if k in row}
                # The row goes to disk before the checkpoint: resuming drops rows past the
                # checkpoint, so a crash between the two never loses an iteration's row.
                history.write(json.dumps(_strict_json(row), default=float, allow_nan=False) + "\n")
                history.flush()
                os.fsync(history.fileno())
                self._checkpoint(searcher, self.model_optimizer, best)
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

        summary = self.summarize(best, setup_seconds)
        self._write_json("summary.json", summary)
        self.pm.hook.on_run_end(run=self, summary=summary)
        return summary

    def summarize(self, best: dict[str, Any], setup_seconds: float) -> dict[str, Any]:
        assert self.model is not None
        final_psi = self.space.describe(self.psi)
        self._write_json("psi.json", {"psi": final_psi,
                                      "raw": {k: v.detach().tolist() for k, v in self.psi.items()},
                                      "space": self.space.with_psi(self.psi).to_dict()})
        summary: dict[str, Any] = {
            "iterations": self.iteration, "images": self.images, "seconds": self.elapsed,
            "seconds_split": dict(self.seconds), "seconds_setup": setup_seconds,
            "psi_start": self.space.describe(self.space.init_psi()), "psi": final_psi, "best": best,
        }
        val_cfg = self.config.validation
        if val_cfg is not None and val_cfg.source == "simulator":
            target = self._space(val_cfg.preset, val_cfg.overrides, "validation", [])
            summary["psi_validation"] = target.describe(target.init_psi())
        if self.val is not None:
            # The last iteration usually scored this very model already; evaluate only if not.
            last = self._last_validation
            if last is not None and last[0] is self.model and last[1] == _state_versions(self.model):
                loss, metrics = last[2], last[3]
            else:
                loss, metrics = self.evaluate(self.model, self.val)
            summary["val"] = {"loss": loss, **metrics}
        if self.test is not None:
            loss, metrics = self.evaluate(self.model, self.test)
            summary["test"] = {"loss": loss, **metrics}
        return summary
