"""The worker layer's pool on in-process workers (tests/fake_workers.py): retries and their
callbacks, a dead or hung worker replaced alone, a job's exception kept apart from a death."""

from __future__ import annotations

from typing import Any

import fake_workers
import pytest

from autosim_core.workers import Failure, Job, Recipe, WorkerPool

FAILED: set[tuple[str, int]] = set()
"""The (cue, job) pairs that have already failed once (cues ending in ``-once``)."""


def answer(state: str, payload: tuple[str, int]) -> tuple[str, int]:
    """A worker's job: ``(cue, n)``; ``ok`` answers (state, n), the others fail as they say."""
    cue, n = payload
    if cue.endswith("-once"):
        if (cue, n) in FAILED:
            return state, n
        FAILED.add((cue, n))
        cue = cue.removesuffix("-once")
    if cue == "raise":
        raise ValueError(f"job {n} raised")
    if cue == "die":
        fake_workers.crash(9)
    if cue == "hang":
        fake_workers.hang()
    return state, n


def built(spec: str) -> str:
    return f"{spec} state"


class Log:
    def __init__(self) -> None:
        self.done: dict[int, Any] = {}
        self.retries: list[tuple[int, int, str]] = []
        self.spent: list[Failure] = []

    def on_done(self, job: Job, result: Any) -> None:
        assert job.tag not in self.done
        self.done[job.tag] = result

    def on_retry(self, failure: Failure) -> None:
        self.retries.append((failure.job.tag, failure.job.attempt + 1, failure.reason))

    def on_spent(self, failure: Failure) -> None:
        self.spent.append(failure)


def pool(workers: int, timeout: float | None = None) -> tuple[WorkerPool, fake_workers.FakeProcesses]:
    FAILED.clear()
    backend = fake_workers.FakeProcesses(workers)
    return WorkerPool(backend, Recipe(answer, built, "worker", label="test"), timeout, "job_timeout"), backend


def test_each_failure_is_retried_and_only_a_dead_or_hung_worker_replaced() -> None:
    workers, backend = pool(2, timeout=30)
    log = Log()
    jobs = [Job(("ok", 0), 0), Job(("die-once", 1), 1), Job(("raise-once", 2), 2), Job(("hang-once", 3), 3)]
    workers.run(jobs, on_done=log.on_done, on_spent=log.on_spent, retries=1, on_retry=log.on_retry)
    assert log.done == {n: ("worker state", n) for n in range(4)} and log.spent == []
    assert log.retries == [(1, 1, "the worker process died (exit code 9)"), (2, 1, "ValueError: job 2 raised"),
                           (3, 1, "no result after job_timeout = 30 s (the worker was killed)")]
    # Slot 0 took jobs 0 and 2 (an exception: the worker is kept), slot 1 died on job 1 and hung
    # on job 3: replaced twice, while slot 0 kept the worker it started with.
    assert backend.starts == [0, 1, 1, 1]
    assert backend.clock == pytest.approx(30)  # the hang ran to its deadline, and no further


def test_a_failure_past_the_retries_is_spent_and_an_exception_is_not_retried_when_asked() -> None:
    workers, backend = pool(1)
    log = Log()
    workers.run([Job(("die", 0), 0), Job(("raise", 1), 1), Job(("ok", 2), 2)], on_done=log.on_done,
                on_spent=log.on_spent, retries=2, retry_errors=False, on_retry=log.on_retry)
    assert log.done == {2: ("worker state", 2)}
    assert [(f.job.tag, f.job.attempt, f.died, f.reason) for f in log.spent] == [
        (1, 0, False, "ValueError: job 1 raised"), (0, 2, True, "the worker process died (exit code 9)")]
    assert [(tag, attempt) for tag, attempt, _ in log.retries] == [(0, 1), (0, 2)]
    assert "ValueError: job 1 raised" in log.spent[0].detail  # the worker's traceback
    assert backend.starts == [0, 0, 0, 0]


def test_a_retry_runs_the_jobs_again_gives_and_a_raising_callback_stops_the_busy_workers() -> None:
    workers, backend = pool(2)
    log = Log()
    workers.run([Job(("raise-once", 0), [0, 1])], on_done=log.on_done, on_spent=log.on_spent, retries=1,
                on_retry=log.on_retry, again=lambda job: [Job(("ok", i), i) for i in job.tag])
    assert log.done == {0: ("worker state", 0), 1: ("worker state", 1)} and len(log.retries) == 1

    def stop(job: Job, result: Any) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        workers.run([Job(("ok", 0), 0), Job(("hang", 1), 1)], on_done=stop, on_spent=log.on_spent)
    assert backend.hung == set() and 1 not in backend.workers  # the hung worker was stopped
    workers.run([Job(("ok", 5), 5)], on_done=log.on_done, on_spent=log.on_spent)  # and starts again
    assert log.done[5] == ("worker state", 5) and backend.starts == [0, 1, 1]
