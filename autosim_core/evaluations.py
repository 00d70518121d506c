"""Black-box objective evaluations on the run's executor: local worker processes or Ray actors.

A black-box searcher proposes its points in batches whose evaluations do not depend on each
other. With ``[executor] kind = "processes"`` or ``"ray"`` and more than one worker, the
evaluations of a batch run at once, one per worker: each worker holds its own copy of the run
(simulator, task and the validation set, sent once) and, per evaluation, renders the scenes,
trains a fresh model and scores it. The run's process draws every evaluation's scenes, render
seeds and minibatch orders itself, in the order a one-at-a-time run draws them, so the rows,
the models and the random streams are those the one-at-a-time run would produce.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .records import Batch
from .workers import Failure, Job, Recipe, WorkerPool, import_target, make_backend, pinned_threads, plugin_target

if TYPE_CHECKING:
    from .run import Run

KINDS = ("simulators", "tasks", "estimators", "searchers")
"""Plugin kinds a worker's copy of the run needs (observers stay in the run's process)."""


@dataclass(frozen=True)
class EvaluationJob:
    """One objective evaluation, with every random draw already made by the run's process."""

    point: dict[str, Any]
    records: list[dict[str, Any]]
    """The scenes to render, each with its ``id`` and render ``seed``."""
    orders: list[torch.Tensor]
    """The order of the examples in each training epoch."""


@dataclass
class EvaluationResult:
    row: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    psi: dict[str, torch.Tensor]
    seconds: dict[str, float] = field(default_factory=dict)
    """The worker's seconds per phase (render, train, eval) for this evaluation."""


ERROR_LOG = "evaluation-error.log"
"""The worker's traceback of a failed evaluation, in the run's folder."""


class EvaluationError(RuntimeError):
    """An evaluation failed in a worker: the message names the point and the cause in one line;
    ``worker_traceback`` is the worker's traceback."""

    def __init__(self, message: str, worker_traceback: str = ""):
        super().__init__(message, worker_traceback)
        self.worker_traceback = worker_traceback

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build its copy of the run."""

    config: dict[str, Any]
    targets: dict[str, dict[str, str]]
    """kind -> {name: ``module:attribute``} for the plugins the config names."""
    validation: Batch | None
    sys_path: tuple[str, ...]
    threads: int
    run_class: type | None = None
    """The class of the run a worker builds (the run's own: the worker imports it by reference)."""


def _target(obj: Any) -> str | None:
    """Where a worker can import ``obj`` (a module, a module-level object or a class)."""
    if isinstance(obj, type) and obj.__module__ != "__main__" and "<locals>" not in obj.__qualname__:
        return f"{obj.__module__}:{obj.__qualname__}"
    return plugin_target(obj)


def worker_spec(run: Run, workers: int) -> WorkerSpec:
    """The spec of ``run``'s evaluation workers; ValueError when a plugin cannot be imported there."""
    config = run.config.model_dump()
    # A worker renders its evaluation's scenes itself, retrying failed renders as the run would.
    config["executor"] = {"kind": "inline", "retries": run.config.executor.retries}
    config["observers"] = {}
    names = {"simulators": run.config.simulator.name, "tasks": run.config.task.name,
             "estimators": run.config.estimator.name, "searchers": run.config.searcher.name}
    objects = {"simulators": run.pm.get_plugin("simulator"), "tasks": run.pm.get_plugin("task"),
               "estimators": run.pm.get_plugin("estimator"), "searchers": run.searcher_cls}
    targets: dict[str, dict[str, str]] = {}
    for kind in KINDS:
        target = run.plugin_targets.get(kind) or _target(objects[kind])
        if target is None:
            raise ValueError(f"executor: the black-box evaluations run in worker processes, which cannot import "
                             f"{kind[:-1]} {names[kind]!r} (it is no module-level object); use kind = 'inline' "
                             "or workers = 1")
        targets[kind] = {names[kind]: target}
    validation = None if run.val is None else run.val.to(torch.device("cpu"))
    # The workers share the machine's cores; a thread count the user pinned is kept.
    return WorkerSpec(config, targets, validation, tuple(sys.path), pinned_threads(workers), type(run))


def evaluate_job(run: Run, box: Any, job: EvaluationJob) -> tuple[dict[str, Any], torch.nn.Module, Any]:
    """One objective evaluation: render ``job``'s scenes, train a fresh model on them in the
    job's orders, score it on the validation set. Returns its history row, the model and psi
    (``box`` is the searcher's ``SearchBox``)."""
    space = box.space_at(job.point)
    psi = space.init_psi()
    batch = run.render_training_records(job.records)
    model = run.create_model()
    optimizer = run.create_model_optimizer(model)
    train_loss = run.fine_tune(model, optimizer, batch, orders=job.orders)
    row = {"train_loss": train_loss, **run.validation_row(model), "psi": space.describe(psi), "point": job.point}
    return row, model, psi


class _WorkerRun:
    """A worker's copy of the run: built once, then evaluates job after job (the worker layer
    has already set its threads and import path)."""

    def __init__(self, spec: WorkerSpec):
        from .config import parse_config
        from .plugins import Registry

        registry = Registry()
        for kind, by_name in spec.targets.items():
            for name, target in by_name.items():
                registry.plugins[kind][name] = import_target(target)
                registry.targets[kind][name] = target
        assert spec.run_class is not None
        self.run = spec.run_class(parse_config(spec.config), os.devnull, registry=registry)
        if spec.validation is not None:
            self.run.val = spec.validation.to(self.run.device)
        searcher = self.run.searcher_cls(self.run, self.run.searcher_settings)
        self.box = searcher.box
        self.epochs = searcher.settings.epochs

    def evaluate(self, job: EvaluationJob) -> EvaluationResult:
        run = self.run
        run.clock.reset()
        row, model, psi = evaluate_job(run, self.box, job)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return EvaluationResult(row, state, {k: v.detach().cpu() for k, v in psi.items()}, dict(run.seconds))


@dataclass(frozen=True)
class _Failed:
    """An evaluation's exception, as its worker answers it: one line and the traceback."""

    cause: str
    worker_traceback: str


def _evaluate_here(worker: _WorkerRun, job: EvaluationJob) -> EvaluationResult | _Failed:
    try:
        return worker.evaluate(job)
    except Exception as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        cause = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        return _Failed(cause, traceback.format_exc())


class EvaluationPool:
    """Evaluates batches of jobs on ``workers`` local processes or Ray actors, kept between batches.

    A worker that dies (a renderer's segfault, the OOM killer) is replaced, alone, and the
    evaluation it left unfinished runs again, up to the executor's ``retries`` times, each time a
    ``{"event": "evaluation_retry"}`` line in the history; an exception inside an evaluation
    (the renders were already retried in the worker) stops the run with the point it failed on.
    """

    def __init__(self, run: Run, kind: str, workers: int):
        self.run = run
        self.kind = kind
        self.workers = workers
        settings = run.config.executor
        self._backend = make_backend(kind, workers, start_method=settings.start_method, address=settings.address)
        self._pool: WorkerPool | None = None

    def evaluate(self, jobs: Sequence[EvaluationJob]) -> list[EvaluationResult]:
        """The results of ``jobs``, in order; EvaluationError naming the first that failed."""
        retries = self.run.config.executor.retries
        results: list[EvaluationResult | _Failed | None] = [None] * len(jobs)

        def done(job: Job, result: EvaluationResult | _Failed) -> None:
            results[job.tag] = result
            # The first failed evaluation in the batch's order stops the run, once those before it are in.
            for i, found in enumerate(results):
                if found is None:
                    return
                if isinstance(found, _Failed):
                    raise self._failed(jobs[i], found.cause, found.worker_traceback)

        def retry(failure: Failure) -> None:
            self.run.record_event({"event": "evaluation_retry", "executor": self.kind,
                                   "points": [jobs[failure.job.tag].point], "attempt": failure.job.attempt + 1,
                                   "retries": retries, "reason": failure.reason})

        def spent(failure: Failure) -> None:
            job = jobs[failure.job.tag]
            if not failure.died:  # the worker could not build its run, or read the job
                raise self._failed(job, failure.reason, str(failure.detail))
            raise EvaluationError(f"the worker {self._what} evaluating point {job.point} died "
                                  f"{failure.job.attempt + 1} time(s) ({failure.reason}); {self.run.resume_hint()}")

        if self._pool is None:
            spec = worker_spec(self.run, self.workers)
            recipe = Recipe(_evaluate_here, _WorkerRun, spec, threads=spec.threads, sys_path=spec.sys_path,
                            label="evaluation", starts="build its copy of the run", name="autosim-evaluate")
            self._pool = WorkerPool(self._backend, recipe)
        self._pool.run([Job(job, i) for i, job in enumerate(jobs)], on_done=done, on_spent=spent, retries=retries,
                       retry_errors=False, on_retry=retry)
        return [r for r in results if isinstance(r, EvaluationResult)]

    @property
    def _what(self) -> str:
        return "process" if self.kind == "processes" else "Ray actor"

    def _failed(self, job: EvaluationJob, cause: str, worker_traceback: str) -> EvaluationError:
        log = self.run.out_dir / ERROR_LOG
        log.write_text(f"The evaluation of point {job.point} failed in a worker:\n\n{worker_traceback}")
        return EvaluationError(f"the evaluation of point {job.point} failed in a worker ({self.kind} executor): "
                               f"{cause} (the worker's traceback is in {log}); {self.run.resume_hint()}",
                               worker_traceback)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def shutdown(self) -> None:
        """Stops the workers and a Ray this pool started."""
        self.close()
        self._backend.shutdown()
