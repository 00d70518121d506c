"""One worker layer: the pools that render scenes, run black-box evaluations and run a comparison's
runs, on local processes, Ray actors or in the caller's own process.

A :class:`Recipe` says what a worker is: ``init(spec)`` builds its state once (a loaded simulator,
a copy of the run, or nothing), then ``handle(state, payload)`` answers job after job. A
:class:`Backend` holds the workers (one per slot): :class:`InlineBackend` in this process,
:class:`ProcessBackend` local processes (spawn or forkserver; a forkserver preloads torch, so its
workers start without importing it again), :class:`RayBackend` Ray actors. A
:class:`WorkerPool` schedules jobs over a backend:

- one job per idle worker, in the order given; a result is read once, from the worker it went to;
- a worker that dies (segfault, ``os._exit``, the OOM killer) or passes the job's timeout is
  killed and replaced, alone: the others keep their state and their jobs;
- a failed job is retried up to ``retries`` times (its ``again`` jobs: a render chunk comes back
  one scene at a time), each retry reported to ``on_retry``; a failure past the retries goes to
  ``on_spent``, which raises or records it.

Examples travel as numpy arrays (``to_wire`` / ``from_wire``); a worker pins its torch threads
(a user's ``OMP_NUM_THREADS`` is kept, otherwise cores // workers) and moves Blender's script
folders to the end of its path before it imports anything else.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from .ray_workers import RayBackend, RayWorker, connect_ray, ray_available, ray_cpus
from .worker_protocol import (
    STARTUP_SECONDS,
    Backend,
    Recipe,
    Reply,
    WireTensor,
    blender_paths_last,
    build_state,
    die_with_parent,
    error_text,
    extend_sys_path,
    from_wire,
    import_target,
    pinned_threads,
    plugin_target,
    prepare,
    serve,
    to_wire,
)

__all__ = [
    "BACKENDS", "STARTUP_SECONDS", "Backend", "Failure", "InlineBackend", "Job", "ProcessBackend", "RayBackend",
    "RayWorker", "Recipe", "Reply", "WireTensor", "WorkerPool", "blender_paths_last", "build_state",
    "connect_ray", "error_text", "extend_sys_path", "from_wire", "import_target", "make_backend", "pinned_threads",
    "plugin_target", "ray_available", "ray_cpus", "serve", "to_wire",
]

FORKSERVER_PRELOAD = ("torch", "torch._dynamo", "autosim_core.workers")
"""Imported once by the forkserver: the workers it forks start with them loaded. torch's
optimisers import ``torch._dynamo`` on first use (about 4 s on two cores), so it is preloaded too."""


class InlineBackend(Backend):
    """One worker: this process. A job runs when it is sent; an exception is its failure (its
    ``detail`` is the exception itself). A hang cannot be interrupted here."""

    kind = "inline"
    wire = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._state: Any = None
        self._started = False
        self._replies: list[Reply] = []

    def _size(self) -> int:
        return 1

    def start(self, slot: int) -> None:
        assert self.recipe is not None
        if not self._started and self.recipe.init is not None:
            self._state = self.recipe.init(self.recipe.spec)
        self._started = True

    def send(self, slot: int, payload: Any) -> None:
        assert self.recipe is not None
        try:
            self._replies.append(Reply(slot, "ok", self.recipe.handle(self._state, payload)))
        except Exception as exc:
            self._replies.append(Reply(slot, "error", (error_text(exc), exc)))

    def wait(self, busy: Sequence[int], timeout: float | None) -> list[Reply]:
        replies, self._replies = self._replies, []
        return replies

    def stop(self, slot: int) -> None:
        self._replies = [r for r in self._replies if r.slot != slot]

    def close(self) -> None:
        self._state, self._started, self._replies = None, False, []


def _process_main(conn: Connection, threads: int | None, sys_path: tuple[str, ...],
                  parent_alive: Connection | None = None) -> None:
    """A worker process: reads its recipe, builds its state, then answers each job until told to
    stop (None) or orphaned; ``("started", None)`` when it begins a job, then the answer. It dies
    with its parent, even in the middle of a job (``die_with_parent``)."""
    die_with_parent(parent_alive)
    prepare(threads, sys_path)
    try:
        recipe = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return
    if recipe is None:
        return
    state, init_error = build_state(recipe)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        job = pickle.loads(message)
        if job is None:
            return
        (payload,) = job
        conn.send_bytes(pickle.dumps(("started", None)))
        reply = serve(recipe, state, init_error, payload)
        try:
            conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception as exc:  # a result that cannot be pickled
            conn.send_bytes(pickle.dumps(("error", (f"cannot send {recipe.sends} back: {error_text(exc)}", ""))))


@dataclass
class _Process:
    process: Any
    conn: Connection
    alive: Connection
    """The write end of the worker's ``parent_alive`` pipe: closing it (or dying) ends the worker."""
    recipe_sent: bool = False


def process_context(start_method: str) -> Any:
    """The multiprocessing context of ``start_method``; a forkserver preloads torch."""
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        context.set_forkserver_preload(list(FORKSERVER_PRELOAD))
    return context


class ProcessBackend(Backend):
    """Local worker processes (spawn or forkserver), each reading its recipe before its first job."""

    kind = "processes"
    process_noun = "worker process"
    reports_started = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._context = process_context(self.start_method)
        self._workers: dict[int, _Process] = {}

    def start(self, slot: int) -> None:
        assert self.recipe is not None
        parent, child = self._context.Pipe(duplex=True)
        alive_r, alive_w = self._context.Pipe(duplex=False)
        process = self._context.Process(target=_process_main, args=(child, self.recipe.threads,
                                                                    self.recipe.sys_path, alive_r),
                                        daemon=self.recipe.daemon, name=self.recipe.name)
        process.start()
        child.close()
        alive_r.close()
        self._workers[slot] = _Process(process, parent, alive_w)

    def send(self, slot: int, payload: Any) -> None:
        worker = self._workers[slot]
        try:
            if not worker.recipe_sent:  # sent with the first job: the workers started meanwhile
                worker.recipe_sent = True
                worker.conn.send_bytes(pickle.dumps(self.recipe, protocol=pickle.HIGHEST_PROTOCOL))
            worker.conn.send_bytes(pickle.dumps((payload,), protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, OSError):
            pass  # the worker died before the job reached it: wait sees the dead process

    def wait(self, busy: Sequence[int], timeout: float | None) -> list[Reply]:
        workers = [self._workers[slot] for slot in busy]
        wait([x for w in workers for x in (w.conn, w.process.sentinel)], timeout=timeout)
        out: list[Reply] = []
        for slot, worker in zip(busy, workers, strict=True):
            died: str | None = None
            try:
                while worker.conn.poll():
                    status, value = pickle.loads(worker.conn.recv_bytes())
                    out.append(Reply(slot, status, value))
                    if status != "started":
                        break
            except (EOFError, OSError):
                worker.process.join(timeout=5)
                died = f"exit code {worker.process.exitcode}"
            answered = any(r.slot == slot and r.status != "started" for r in out)
            if died is None and not answered and not worker.process.is_alive():
                died = f"exit code {worker.process.exitcode}"
            if died is not None and not answered:
                self.stop(slot)
                self.start(slot)
                out.append(Reply(slot, "died", died))
        return out

    def stop(self, slot: int) -> None:
        worker = self._workers.pop(slot, None)
        if worker is None:
            return
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=10)
        worker.conn.close()
        worker.alive.close()

    def close(self) -> None:
        for worker in self._workers.values():
            try:
                worker.conn.send_bytes(pickle.dumps(None))
            except (BrokenPipeError, OSError):
                pass
        for worker in self._workers.values():
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()
            worker.alive.close()
        self._workers.clear()


BACKENDS: dict[str, type[Backend]] = {"inline": InlineBackend, "processes": ProcessBackend, "ray": RayBackend}
"""The backend of each executor kind."""


def make_backend(kind: str, workers: int | None = None, *, start_method: str = "spawn", address: str | None = None,
                 most: int | None = None) -> Backend:
    """The backend of ``kind`` for ``workers`` workers (None: one per CPU of the machine or Ray
    cluster; ``most``: no more than that)."""
    return BACKENDS[kind](workers, start_method=start_method, address=address, most=most)


# -------------------------------------------------------------------------------- pools ---
@dataclass
class Job:
    """A payload for a worker, with what the caller needs to place its result (``tag``)."""

    payload: Any
    tag: Any = None
    attempt: int = 0
    """How many times it failed before (a retry's jobs carry the failed job's attempt + 1)."""


@dataclass(frozen=True)
class Failure:
    job: Job
    reason: str
    """One line: the job's exception, the worker's death or its timeout."""
    died: bool
    """The worker died or passed the timeout (and was replaced); False: the job raised."""
    detail: Any = None
    """The worker's traceback (or, inline, the exception itself); a died worker's cause."""


@dataclass
class _Slot:
    job: Job | None = None
    sent: float = 0.0
    started: float | None = None
    running: bool = False
    """Whether a worker was started in this slot."""


@dataclass
class WorkerPool:
    """Jobs on the workers of ``backend``, built from ``recipe``; workers start on the first
    ``run`` and are kept until ``close``. See the module's docstring."""

    backend: Backend
    recipe: Recipe
    timeout: float | None = None
    """Seconds a job may take once begun (None: no limit)."""
    timeout_setting: str = "timeout"
    """The setting ``timeout`` comes from, in messages."""
    _slots: list[_Slot] = field(default_factory=list)

    def _open(self) -> None:
        if not self._slots:
            self.backend.open(self.recipe)
            self._slots = [_Slot() for _ in range(self.backend.size)]
        for slot, state in enumerate(self._slots):
            if not state.running:
                self.backend.start(slot)
                state.running = True

    def _deadline(self, state: _Slot) -> float:
        assert self.timeout is not None
        if state.started is not None:
            return state.started + self.timeout
        return state.sent + STARTUP_SECONDS + self.timeout

    def run(self, jobs: Iterable[Job], *, on_done: Callable[[Job, Any], None], on_spent: Callable[[Failure], None],
            retries: int = 0, retry_errors: bool = True, again: Callable[[Job], list[Job]] | None = None,
            on_retry: Callable[[Failure], None] | None = None) -> None:
        """Runs every job (and its retries) to its end: ``on_done(job, result)`` for each result,
        ``on_retry(failure)`` before a failed job runs again (as ``again(job)``, default: itself),
        ``on_spent(failure)`` for a failure past ``retries`` (or a job's exception when not
        ``retry_errors``). A callback that raises ends the run; the workers still busy then are
        stopped (and started again by the next run)."""
        queue = deque(jobs)
        self._open()
        try:
            while queue or self._busy():
                for slot, state in enumerate(self._slots):
                    if queue and state.job is None and self.backend.ready(slot):
                        self._send(slot, queue.popleft())
                for job, result in self._collect():
                    if not isinstance(result, Failure):
                        on_done(job, result)
                    elif job.attempt >= retries or not (result.died or retry_errors):
                        on_spent(result)
                    else:
                        if on_retry is not None:
                            on_retry(result)
                        queue.extend(dataclasses.replace(j, attempt=job.attempt + 1)
                                     for j in (again(job) if again is not None else [job]))
        finally:
            for slot, state in enumerate(self._slots):
                if state.job is not None:
                    self.backend.stop(slot)
                    self._slots[slot] = _Slot()

    def _busy(self) -> list[int]:
        return [slot for slot, state in enumerate(self._slots) if state.job is not None]

    def _send(self, slot: int, job: Job) -> None:
        state = self._slots[slot]
        state.job, state.sent = job, self.backend.now()
        state.started = None if self.backend.reports_started else state.sent
        self.backend.send(slot, job.payload)

    def _collect(self) -> list[tuple[Job, Any]]:
        """Waits for at least one busy worker to answer, die or pass its deadline."""
        busy = self._busy()
        wait_for = self.backend.startup_left()
        if self.timeout is not None and busy:
            left = max(0.0, min(self._deadline(self._slots[s]) for s in busy) - self.backend.now())
            wait_for = left if wait_for is None else min(wait_for, left)
        replies = self.backend.wait(busy, wait_for)
        out: list[tuple[Job, Any]] = []
        answered = set()
        for reply in replies:
            state = self._slots[reply.slot]
            job = state.job
            if job is None:
                continue
            if reply.status == "started":
                state.started = self.backend.now()
                continue
            answered.add(reply.slot)
            self._slots[reply.slot] = _Slot(running=True)
            if reply.status == "ok":
                out.append((job, from_wire(reply.value) if self.backend.wire else reply.value))
            elif reply.status == "error":
                line, detail = reply.value
                out.append((job, Failure(job, line, False, detail)))
            else:
                out.append((job, Failure(job, self.backend.died_reason(reply.value), True, reply.value)))
        if self.timeout is not None:
            now = self.backend.now()
            for slot in busy:
                state = self._slots[slot]
                if slot in answered or state.job is None or now < self._deadline(state):
                    continue
                job = state.job
                self.backend.stop(slot)
                self.backend.start(slot)
                self._slots[slot] = _Slot(running=True)
                out.append((job, Failure(job, f"no result after {self.timeout_setting} = {self.timeout:g} s "
                                              f"(the {self.backend.noun} was killed)", True, "timeout")))
        return out

    def close(self) -> None:
        """Stops the workers (a later run starts them again)."""
        self.backend.close()
        self._slots = []

    def shutdown(self) -> None:
        """Stops the workers and what the backend started for them (a local Ray)."""
        self.backend.shutdown()
        self._slots = []
