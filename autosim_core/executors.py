"""Executors: where a batch of scene records is rendered.

The run samples every scene and its render seed itself, then hands the records to an executor;
records and images never depend on which executor renders them or on how many workers it has.

- ``inline``: the run's own process, one call of the simulator's ``render`` hook per batch.
- ``processes``: a pool of local worker processes (spawn or forkserver: renderers such as
  Blender's Cycles refuse a forked process). Each worker loads the simulator plugin once, from
  its importable reference, and keeps it between batches.
- ``ray``: Ray actors, on a local Ray started on demand or on an existing cluster.

The workers are those of :mod:`autosim_core.workers`; this module adds the render job type.

A batch is split into one contiguous chunk per worker. A chunk whose worker raises, crashes
(segfault, ``os._exit``) or hangs past ``render_timeout`` is rendered again, one scene at a time
so that a lasting failure names its scene, up to ``retries`` times; the worker is replaced first.
Each retry is reported to the caller (the run writes it to ``history.jsonl``). Every result lands
in its scene's slot once: a chunk that failed contributes nothing, and a replaced worker's late
answer is never read, so no image is lost or counted twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import Executor as ExecutorSettings
from .records import Example
from .workers import (
    STARTUP_SECONDS,
    Failure,
    Job,
    Recipe,
    WireTensor,
    WorkerPool,
    blender_paths_last,
    connect_ray,
    extend_sys_path,
    from_wire,
    import_target,
    make_backend,
    pinned_threads,
    plugin_target,
    ray_available,
    ray_cpus,
    to_wire,
)

__all__ = [
    "STARTUP_SECONDS", "ExampleCountError", "Executor", "InlineExecutor", "ProcessExecutor", "RayExecutor",
    "RenderError", "SimulatorRef", "WireTensor", "blender_paths_last", "connect_ray", "from_wire", "make_executor",
    "plugin_target", "ray_available", "ray_cpus", "render_chunk", "split_contiguous", "to_wire",
]

RenderFn = Callable[[list[dict[str, Any]]], list[Example]]
"""records -> examples, one per record and in order."""
RetryCallback = Callable[[dict[str, Any]], None]
"""Receives one event per retried chunk: ``{"event": "render_retry", "scenes": [...], ...}``."""


class ExampleCountError(RuntimeError):
    """The simulator's ``render`` returned a different number of examples than it was given scenes."""

    def __init__(self, returned: int, scenes: int):
        super().__init__(f"the simulator returned {returned} examples for {scenes} scenes")
        self.returned = returned
        self.scenes = scenes


class RenderError(RuntimeError):
    """A scene that still failed after every retry."""

    def __init__(self, message: str, scene: dict[str, Any], attempts: int, reason: str):
        super().__init__(message)
        self.scene = scene
        self.attempts = attempts
        self.reason = reason


# ----------------------------------------------------------------- simulator in workers ---
@dataclass(frozen=True)
class SimulatorRef:
    """What a worker needs to build the run's simulator: ``module`` or ``module:attribute`` of the
    plugin object (its entry point's target), its settings as JSON data (validated again by the
    worker, so nothing of the plugin is unpickled before the worker can import it) and the
    parent's import path (local workers then find plugins that are importable but not
    installed, as in tests)."""

    name: str
    target: str
    settings: Any
    sys_path: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        blob = json.dumps([self.target, self.settings], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


_LOADED: dict[str, tuple[Any, Any]] = {}
"""A worker's simulators by ``SimulatorRef.key``: loaded once, kept between batches."""


def _load(ref: SimulatorRef) -> tuple[Any, Any]:
    found = _LOADED.get(ref.key)
    if found is not None:
        return found
    extend_sys_path(ref.sys_path)
    from .config import validate_settings
    from .plugins import plugin_manager

    plugin = import_target(ref.target)
    pm = plugin_manager(("simulator", plugin))
    settings = validate_settings(pm.hook.simulator_settings_model(), ref.settings, "simulator.settings")
    found = (pm, settings)
    _LOADED[ref.key] = found
    return found


def render_chunk(ref: SimulatorRef, records: list[dict[str, Any]]) -> list[Example]:
    """Render ``records`` with the simulator ``ref`` names (in a worker process)."""
    pm, settings = _load(ref)
    return list(pm.hook.render(scenes=records, settings=settings))


def _render_job(state: Any, payload: tuple[SimulatorRef, list[dict[str, Any]]]) -> list[Example]:
    """A worker's job: one chunk of records (with the simulator, which the worker loaded at its start)."""
    ref, records = payload
    return render_chunk(ref, records)


# ---------------------------------------------------------------------------- scheduling ---
def split_contiguous(count: int, parts: int) -> list[list[int]]:
    """0..count-1 in ``min(parts, count)`` contiguous runs whose sizes differ by at most one."""
    parts = max(1, min(parts, count))
    base, extra = divmod(count, parts)
    out, start = [], 0
    for p in range(parts):
        size = base + (1 if p < extra else 0)
        out.append(list(range(start, start + size)))
        start += size
    return [c for c in out if c]


def _describe_scene(record: dict[str, Any]) -> str:
    shown = {k: v for k, v in record.items() if k not in ("id",)}
    text = repr(shown)
    return text if len(text) <= 400 else text[:397] + "..."




class Executor:
    """Renders batches of records; see the module's docstring."""

    kind = "inline"

    def __init__(self, settings: ExecutorSettings):
        self.settings = settings
        self.last_exception: BaseException | None = None
        """The last exception a render raised in this process (inline), for its traceback."""
        self._backend = make_backend(self.kind, settings.workers, start_method=settings.start_method,
                                     address=settings.address)
        self._pool: WorkerPool | None = None
        self._key: str | None = None
        self._inline: RenderFn | None = None

    @property
    def workers(self) -> int:
        return self._backend.size

    def _recipe(self, ref: SimulatorRef | None) -> Recipe:
        if ref is None:
            raise ValueError(f"the {self.kind} executor needs a simulator importable by its workers")
        # A worker process shares the machine's cores; a Ray actor keeps the threads Ray gives it.
        threads = pinned_threads(self.workers) if self.kind == "processes" else None
        return Recipe(_render_job, _load, ref, threads=threads, label="render", starts="load the simulator",
                      sends="the examples", name="autosim-render")

    def _pool_for(self, ref: SimulatorRef | None) -> WorkerPool:
        key = None if ref is None else ref.key
        if self._pool is not None and self._key != key:  # another simulator or its settings
            self._pool.close()
            self._pool = None
        if self._pool is None:
            self._pool = WorkerPool(self._backend, self._recipe(ref), self.settings.render_timeout, "render_timeout")
            self._key = key
        return self._pool

    def render(self, records: Sequence[dict[str, Any]], ref: SimulatorRef | None, inline: RenderFn,
               on_retry: RetryCallback | None = None) -> list[Example]:
        """Examples of ``records``, in order. ``inline`` renders in this process (the inline
        executor's way); ``ref`` is how workers build the simulator."""
        records = list(records)
        if not records:
            return []
        self._inline = inline
        results: list[Example | None] = [None] * len(records)

        def job(indices: list[int]) -> Job:
            return Job((ref, [records[i] for i in indices]), indices)

        def done(chunk: Job, examples: list[Example]) -> None:
            if len(examples) != len(chunk.tag):
                # A broken plugin, not a passing fault: rendering again would only repeat it.
                raise ExampleCountError(len(examples), len(chunk.tag))
            for i, example in zip(chunk.tag, examples, strict=True):
                if results[i] is not None:  # cannot happen: a chunk is started once per attempt
                    raise RuntimeError(f"scene {records[i].get('id')!r} was rendered twice")
                results[i] = example

        def failed(failure: Failure) -> None:
            if isinstance(failure.detail, BaseException):
                self.last_exception = failure.detail

        def retry(failure: Failure) -> None:
            failed(failure)
            chunk = failure.job
            if on_retry is not None:
                on_retry({"event": "render_retry", "executor": self.kind, "scenes": [records[i].get("id")
                                                                                      for i in chunk.tag],
                          "attempt": chunk.attempt + 1, "retries": self.settings.retries, "reason": failure.reason})

        def spent(failure: Failure) -> None:
            failed(failure)
            chunk = failure.job
            scene = records[chunk.tag[0]]
            which = (f"scene {scene.get('id')!r}" if len(chunk.tag) == 1 else
                     f"scenes {[records[j].get('id') for j in chunk.tag]}")
            raise RenderError(f"{which} failed to render {chunk.attempt + 1} time(s) ({self.kind} executor; "
                              f"last: {failure.reason}); first scene: {_describe_scene(scene)}",
                              scene, chunk.attempt + 1, failure.reason) from self.last_exception

        self._pool_for(ref).run([job(c) for c in split_contiguous(len(records), self.workers)], on_done=done,
                                on_spent=spent, retries=self.settings.retries, on_retry=retry,
                                again=lambda chunk: [job([i]) for i in chunk.tag])
        missing = [records[i].get("id") for i, r in enumerate(results) if r is None]
        if missing:  # cannot happen: the loop ends only when every chunk has landed
            raise RuntimeError(f"scenes {missing} were never rendered")
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Stops the workers (an executor is usable again afterwards: they restart)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._backend.shutdown()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _inline_render(executor: InlineExecutor, payload: tuple[SimulatorRef | None, list[dict[str, Any]]]) -> Any:
    assert executor._inline is not None
    return list(executor._inline(payload[1]))


class InlineExecutor(Executor):
    """In the run's process: one ``render`` call per batch (a hang cannot be interrupted here)."""

    kind = "inline"

    def _recipe(self, ref: SimulatorRef | None) -> Recipe:
        return Recipe(_inline_render, spec=self, init=lambda executor: executor, label="render")


class ProcessExecutor(Executor):
    """A pool of local worker processes, started on the first batch and kept between batches."""

    kind = "processes"


class RayExecutor(Executor):
    """Ray actors, one per worker (each loads the simulator once), on a local Ray started on
    demand or on the cluster at ``address``; examples come back through Ray's object store.

    A chunk goes only to an actor that has loaded the simulator, so ``render_timeout`` is the
    render's own; a hung actor is killed and replaced.
    """

    kind = "ray"


def make_executor(settings: ExecutorSettings) -> Executor:
    if settings.kind == "processes":
        return ProcessExecutor(settings)
    if settings.kind == "ray":
        return RayExecutor(settings)
    return InlineExecutor(settings)
