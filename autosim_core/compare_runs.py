"""Running a comparison's runs (one per method and seed): one after another in this process,
concurrently in local worker processes, or as Ray tasks.

Every run is one :class:`RunJob`: its config as data, its folder and the config text it keeps.
A worker builds the run from the job, executes it and answers only ``None`` (finished) or one
line saying why it failed; the comparison is then read back from the run folders, as
:mod:`autosim_core.compare` always does. A run that fails leaves its traceback in its folder's
``error.log`` and the other runs carry on.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

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
        console = None if job.live_progress else Console(stderr=True, highlight=False, force_terminal=False)
        runner = Run(parse_config(job.config), out_dir, registry=registry, config_text=job.config_text,
                     observers=(ConsoleProgress(console), PlotCurves()))
        runner.execute(resume=job.resume)
        return None
    except Exception as exc:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / ERROR_LOG).write_text(traceback.format_exc())
        return f"{_one_line(exc)} (traceback in {out_dir / ERROR_LOG})"
    finally:
        if runner is not None:
            runner.close()


# ------------------------------------------------------------------------ local processes ---
def _process_main(job: RunJob, conn: Connection, threads: int | None) -> None:
    from .executors import blender_paths_last

    blender_paths_last()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    conn.send(execute_run(job))
    conn.close()


def _run_in_processes(jobs: Sequence[RunJob], workers: int, threads: int | None) -> list[str | None]:
    """Each run in its own spawned process, at most ``workers`` at a time: a run that crashes its
    process (segfault, killed) fails alone."""
    context = multiprocessing.get_context("spawn")
    pending = deque(range(len(jobs)))
    running: dict[int, tuple[int, Any, Connection]] = {}
    results: list[str | None] = [None] * len(jobs)
    try:
        while pending or running:
            while pending and len(running) < workers:
                index = pending.popleft()
                job = jobs[index]
                parent, child = context.Pipe(duplex=False)
                process = context.Process(target=_process_main, args=(job, child, threads),
                                          name=f"autosim-compare {job.label}")
                process.start()
                child.close()
                running[process.sentinel] = (index, process, parent)
            for sentinel in wait(list(running)):
                index, process, conn = running.pop(sentinel)
                process.join()
                died = f"the run's process died (exit code {process.exitcode})"
                try:
                    results[index] = conn.recv() if conn.poll() else died
                except (EOFError, OSError):
                    results[index] = died
                conn.close()
    finally:
        for _job, process, conn in running.values():  # interrupted: stop the runs still going
            process.terminate()
            process.join(timeout=10)
            conn.close()
    return results


# ------------------------------------------------------------------------------------ Ray ---
def _ray_execute(job: RunJob) -> str | None:
    from .executors import blender_paths_last

    blender_paths_last()
    import torch

    torch.set_num_threads(1)
    return execute_run(job)


def _run_on_ray(jobs: Sequence[RunJob], workers: int | None, address: str | None) -> list[str | None]:
    """Each run a Ray task holding one CPU, at most ``workers`` at a time (default: the cluster's
    CPUs); a local Ray is started when none is running and shut down afterwards."""
    import ray

    from .executors import connect_ray, ray_cpus

    started = connect_ray(address)
    try:
        limit = workers or max(1, ray_cpus())
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_execute)
        pending = deque(range(len(jobs)))
        running: dict[Any, int] = {}
        results: list[str | None] = [None] * len(jobs)
        while pending or running:
            while pending and len(running) < limit:
                index = pending.popleft()
                running[task.remote(jobs[index])] = index
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                index = running.pop(ref)
                try:
                    results[index] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    results[index] = f"the Ray worker running it died ({type(exc).__name__})"
        return results
    finally:
        if started:
            ray.shutdown()


def run_jobs(jobs: Sequence[RunJob], executor: str = "inline", workers: int | None = None,
             address: str | None = None, registry: Any = None) -> list[str | None]:
    """Runs every job on ``executor``; per job, in order, None (finished) or why it failed.

    ``processes`` and ``ray`` give each worker one torch thread when several run at once: the
    runs are what is parallel, and one thread each keeps them from contending for the cores."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if not jobs:
        return []
    if executor == "inline":
        return [execute_run(job, registry) for job in jobs]
    if executor == "processes":
        size = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
        return _run_in_processes(jobs, size, 1 if size > 1 else None)
    return _run_on_ray(jobs, workers, address)
