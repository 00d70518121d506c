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

import importlib
import multiprocessing
import os
import sys
import traceback
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .records import Batch

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


def _import(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in filter(None, attribute.split(".")):
        found = getattr(found, part)
    return found


def _target(obj: Any) -> str | None:
    """Where a worker can import ``obj`` (a module, a module-level object or a class)."""
    from .executors import plugin_target

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
    pinned = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(pinned) if pinned.isdigit() and int(pinned) > 0 else max(1, (os.cpu_count() or 1) // workers)
    return WorkerSpec(config, targets, validation, tuple(sys.path), threads)


class _WorkerRun:
    """A worker's copy of the run: built once, then evaluates job after job."""

    def __init__(self, spec: WorkerSpec):
        from .executors import blender_paths_last

        blender_paths_last()
        torch.set_num_threads(spec.threads)
        for entry in spec.sys_path:
            if entry not in sys.path and os.path.isdir(entry):
                sys.path.append(entry)
        from .config import parse_config
        from .plugins import Registry
        from .run import Run

        registry = Registry()
        for kind, by_name in spec.targets.items():
            for name, target in by_name.items():
                registry.plugins[kind][name] = _import(target)
                registry.targets[kind][name] = target
        self.run = Run(parse_config(spec.config), os.devnull, registry=registry)
        if spec.validation is not None:
            self.run.val = spec.validation.to(self.run.device)
        searcher = self.run.searcher_cls(self.run, self.run.searcher_settings)
        self.box = searcher.box
        self.epochs = searcher.settings.epochs

    def evaluate(self, job: EvaluationJob) -> EvaluationResult:
        from .blackbox import evaluate_job

        run = self.run
        run.clock.reset()
        row, model, psi = evaluate_job(run, self.box, job)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return EvaluationResult(row, state, {k: v.detach().cpu() for k, v in psi.items()}, dict(run.seconds))


_WORKER: _WorkerRun | None = None


def _process_init(spec: WorkerSpec) -> None:
    global _WORKER
    _WORKER = _WorkerRun(spec)


def _evaluate_here(worker: _WorkerRun, job: EvaluationJob) -> EvaluationResult:
    try:
        return worker.evaluate(job)
    except Exception as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        cause = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise EvaluationError(cause, traceback.format_exc()) from None


def _process_evaluate(job: EvaluationJob) -> EvaluationResult:
    assert _WORKER is not None
    return _evaluate_here(_WORKER, job)


class _WorkerDied(Exception):
    """The process or actor running an evaluation died (crash, kill); the evaluation is retried."""


class EvaluationPool:
    """Evaluates batches of jobs on ``workers`` local processes or Ray actors, kept between batches.

    A worker that dies (a renderer's segfault, the OOM killer) is replaced and the evaluations it
    left unfinished run again, up to the executor's ``retries`` times, each time a
    ``{"event": "evaluation_retry"}`` line in the history; an exception inside an evaluation
    (the renders were already retried in the worker) stops the run with the point it failed on.
    """

    def __init__(self, run: Run, kind: str, workers: int):
        self.run = run
        self.kind = kind
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._actors: list[Any] = []
        self._started_ray = False

    def evaluate(self, jobs: Sequence[EvaluationJob]) -> list[EvaluationResult]:
        """The results of ``jobs``, in order; EvaluationError naming the first that failed."""
        retries = self.run.config.executor.retries
        results: list[EvaluationResult | None] = [None] * len(jobs)
        attempt = 0
        while True:
            pending = [i for i, r in enumerate(results) if r is None]
            handles = self._submit([jobs[i] for i in pending])
            died: list[int] = []
            reason = ""
            for i, handle in zip(pending, handles, strict=True):
                try:
                    results[i] = self._result(handle, jobs[i])
                except _WorkerDied as exc:
                    died.append(i)
                    reason = str(exc)
            if not died:
                return [r for r in results if r is not None]
            self.close()
            if attempt >= retries:
                raise EvaluationError(f"the worker {self._what} evaluating point {jobs[died[0]].point} died "
                                      f"{attempt + 1} time(s) ({reason}); {self.run.resume_hint()}")
            attempt += 1
            self.run.record_event({"event": "evaluation_retry", "executor": self.kind,
                                   "points": [jobs[i].point for i in died], "attempt": attempt,
                                   "retries": retries, "reason": reason})

    @property
    def _what(self) -> str:
        return "process" if self.kind == "processes" else "Ray actor"

    def _submit(self, jobs: Sequence[EvaluationJob]) -> list[Any]:
        if self.kind == "processes":
            if self._pool is None:
                context = multiprocessing.get_context(self.run.config.executor.start_method)
                self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_process_init,
                                                 initargs=(worker_spec(self.run, self.workers),))
            return [self._pool.submit(_process_evaluate, job) for job in jobs]
        import ray

        from .executors import connect_ray

        if not self._actors:
            self._started_ray = connect_ray(self.run.config.executor.address) or self._started_ray
            spec = ray.put(worker_spec(self.run, self.workers))
            actor_class = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(_RayEvaluator)
            self._actors = [actor_class.remote(spec) for _ in range(self.workers)]
        return [self._actors[i % len(self._actors)].evaluate.remote(job) for i, job in enumerate(jobs)]

    def _result(self, handle: Any, job: EvaluationJob) -> EvaluationResult:
        if self.kind == "processes":
            try:
                return handle.result()
            except BrokenProcessPool as exc:
                raise _WorkerDied(str(exc)) from None
            except EvaluationError as exc:
                raise self._failed(job, str(exc), exc.worker_traceback) from None
        import ray

        try:
            return ray.get(handle)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, EvaluationError):
                raise self._failed(job, str(cause), cause.worker_traceback) from None
            raise self._failed(job, f"{type(cause or exc).__name__}: {cause or exc}", str(exc)) from None
        except ray.exceptions.RayError as exc:
            raise _WorkerDied(type(exc).__name__) from None

    def _failed(self, job: EvaluationJob, cause: str, worker_traceback: str) -> EvaluationError:
        log = self.run.out_dir / ERROR_LOG
        log.write_text(f"The evaluation of point {job.point} failed in a worker:\n\n{worker_traceback}")
        return EvaluationError(f"the evaluation of point {job.point} failed in a worker ({self.kind} executor): "
                               f"{cause} (the worker's traceback is in {log}); {self.run.resume_hint()}",
                               worker_traceback)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._actors:
            import ray

            for actor in self._actors:
                ray.kill(actor)
            self._actors = []

    def shutdown(self) -> None:
        """Stops the workers and a Ray this pool started."""
        self.close()
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False


class _RayEvaluator:
    """A Ray actor holding one worker copy of the run."""

    def __init__(self, spec: WorkerSpec):
        self.worker = _WorkerRun(spec)

    def evaluate(self, job: EvaluationJob) -> EvaluationResult:
        return _evaluate_here(self.worker, job)
