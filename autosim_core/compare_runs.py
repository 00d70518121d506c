"""Running a comparison's runs (one per method and seed): one after another in this process,
concurrently on the workers of :mod:`autosim_core.workers` (local processes or Ray actors).

Every run is one :class:`RunJob`: its config as data, its folder and the config text it keeps;
the fresh models that score a finished run's psi (``--final-training``) are one :class:`FinalJob`.
A worker builds the run from the job, executes it and answers only ``None`` (finished) or one
line saying why it failed; the comparison is then read back from the run folders, as
:mod:`autosim_core.compare` always does. A run that fails leaves its traceback in its folder's
``error.log`` and the other runs carry on.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .workers import Failure, Job, Recipe, WorkerPool, make_backend

EXECUTORS = ("inline", "processes", "ray")
ERROR_LOG = "error.log"


@dataclass(frozen=True)
class RunJob:
    """One run of a comparison, as data a worker process or a Ray task can receive."""

    method: str
    seed_index: int
    config: dict[str, Any]
    """The run's config (``RunConfig.model_dump()``), parsed again by the worker."""
    out_dir: str
    config_text: str
    resume: bool
    live_progress: bool = True
    """False when runs share the console: the per-iteration lines only, no live display."""

    @property
    def label(self) -> str:
        return f"{self.method} seed {self.seed_index}"

    def run(self, registry: Any = None) -> str | None:
        return execute_run(self, registry)


@dataclass(frozen=True)
class FinalJob:
    """The fresh models of one finished run (``autosim train --snapshots``), or those trained on its
    validation set (``on = "validation"``), written to ``out_dir``."""

    method: str
    seed_index: int
    run_dir: str
    out_dir: str
    on: str = "renders"
    final_training: dict[str, Any] | None = None
    """The comparison's ``[final_training]``: it scores a run finished under another one too."""

    @property
    def label(self) -> str:
        what = "fresh models" if self.on == "renders" else "models trained on the validation set"
        return f"{what} of {self.method} seed {self.seed_index}"

    def run(self, registry: Any = None) -> str | None:
        """Trains the job's fresh models; None when done, else one line saying why not."""
        from .final import FinalTrainer

        out_dir = Path(self.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / ERROR_LOG).unlink(missing_ok=True)
        trainer = None
        try:
            trainer = FinalTrainer(self.run_dir, final_training=self.final_training, registry=registry)
            trainer.score(out_dir, snapshots=self.on == "renders", on=self.on)  # type: ignore[arg-type]
            return None
        except Exception as exc:
            (out_dir / ERROR_LOG).write_text(traceback.format_exc())
            return f"{_one_line(exc)} (traceback in {out_dir / ERROR_LOG})"
        finally:
            if trainer is not None:
                trainer.close()


ComparisonJob = RunJob | FinalJob
"""What a comparison hands its workers."""


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def execute_run(job: RunJob, registry: Any = None) -> str | None:
    """Runs ``job`` to its end; None when it finished, else one line saying why it did not."""
    from rich.console import Console

    from .config import parse_config
    from .observers import ConsoleProgress, PlotCurves
    from .run import Run

    out_dir = Path(job.out_dir)
    (out_dir / ERROR_LOG).unlink(missing_ok=True)  # a failure of an earlier attempt
    runner = None
    try:
        # Runs that share the console prefix their lines with the run's name and seed.
        console, prefix = ((None, "") if job.live_progress else
                           (Console(stderr=True, highlight=False, force_terminal=False), f"{job.label}: "))
        runner = Run(parse_config(job.config), out_dir, registry=registry, config_text=job.config_text,
                     observers=(ConsoleProgress(console, prefix), PlotCurves()))
        runner.execute(resume=job.resume)
        return None
    except Exception as exc:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / ERROR_LOG).write_text(traceback.format_exc())
        return f"{_one_line(exc)} (traceback in {out_dir / ERROR_LOG})"
    finally:
        if runner is not None:
            runner.close()


# ----------------------------------------------------------------------------- on workers ---
def _execute(state: Any, job: ComparisonJob) -> str | None:
    """A worker's job: one run or one run's fresh models, in a worker process or Ray actor."""
    return job.run()


def _run_on_workers(jobs: Sequence[ComparisonJob], kind: str, workers: int | None, address: str | None,
                    threads: int | None) -> list[str | None]:
    """Each run a job of a pool of ``workers`` processes or Ray actors (default: the machine's or
    the cluster's CPUs, no more than the runs): a run that crashes its worker (segfault, killed)
    fails alone, and a fresh worker takes the next run."""
    # Local workers are forked from a server process that has imported torch once (Blender's
    # Cycles refuses a forked process, not a forkserver's child).
    backend = make_backend(kind, workers, start_method="forkserver", address=address, most=len(jobs))
    # A worker starts processes of its own when a run's executor asks for them: no daemon.
    recipe = Recipe(_execute, threads=threads, label="run", daemon=False, name="autosim-compare")
    pool = WorkerPool(backend, recipe)
    results: list[str | None] = [None] * len(jobs)

    def done(job: Job, result: str | None) -> None:
        results[job.tag] = result

    def died(failure: Failure) -> None:
        if not failure.died:
            results[failure.job.tag] = failure.reason
        elif kind == "processes":
            results[failure.job.tag] = f"the run's process died ({failure.detail})"
        else:
            results[failure.job.tag] = f"the Ray worker running it died ({failure.detail})"

    try:
        pool.run([Job(job, i) for i, job in enumerate(jobs)], on_done=done, on_spent=died)
    finally:  # interrupted: the runs still going are stopped
        pool.shutdown()
    return results


def run_jobs(jobs: Sequence[ComparisonJob], executor: str = "inline", workers: int | None = None,
             address: str | None = None, registry: Any = None) -> list[str | None]:
    """Runs every job on ``executor``; per job, in order, None (finished) or why it failed.

    ``processes`` and ``ray`` give each worker one torch thread when several run at once: the
    runs are what is parallel, and one thread each keeps them from contending for the cores."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if not jobs:
        return []
    if executor == "inline":
        return [job.run(registry) for job in jobs]
    if executor == "processes":
        size = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
        return _run_on_workers(jobs, executor, size, None, 1 if size > 1 else None)
    return _run_on_workers(jobs, executor, workers, address, 1)
