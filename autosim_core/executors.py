"""Executors: where a batch of scene records is rendered.

The run samples every scene and its render seed itself, then hands the records to an executor;
records and images never depend on which executor renders them or on how many workers it has.

- ``inline``: the run's own process, one call of the simulator's ``render`` hook per batch.
- ``processes``: a pool of local worker processes (spawn or forkserver: renderers such as
  Blender's Cycles refuse a forked process). Each worker loads the simulator plugin once, from
  its importable reference, and keeps it between batches.
- ``ray``: Ray tasks, on a local Ray started on demand or on an existing cluster.

A batch is split into one contiguous chunk per worker. A chunk whose worker raises, crashes
(segfault, ``os._exit``) or hangs past ``render_timeout`` is rendered again, one scene at a time
so that a lasting failure names its scene, up to ``retries`` times; the worker is replaced first.
Each retry is reported to the caller (the run writes it to ``history.jsonl``). Every result lands
in its scene's slot once: a chunk that failed contributes nothing, and a replaced worker's late
answer is never read, so no image is lost or counted twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import multiprocessing
import os
import pickle
import sys
import time
import types
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Executor as ExecutorSettings
from .records import Example

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


def plugin_target(plugin: Any) -> str | None:
    """``module`` or ``module:attribute`` under which ``plugin`` can be imported, or None."""
    if isinstance(plugin, types.ModuleType):
        return plugin.__name__
    module_name = getattr(type(plugin), "__module__", None)
    module = sys.modules.get(module_name or "")
    if module is None or module_name == "__main__":
        return None
    for attribute, value in vars(module).items():
        if value is plugin:
            return f"{module_name}:{attribute}"
    return None


_LOADED: dict[str, tuple[Any, Any]] = {}
"""A worker's simulators by ``SimulatorRef.key``: loaded once, kept between batches."""


def _load(ref: SimulatorRef) -> tuple[Any, Any]:
    found = _LOADED.get(ref.key)
    if found is not None:
        return found
    for entry in ref.sys_path:
        if entry not in sys.path and os.path.isdir(entry):
            sys.path.append(entry)
    from .config import validate_settings
    from .plugins import plugin_manager

    module_name, _, attribute = ref.target.partition(":")
    plugin: Any = importlib.import_module(module_name)
    for part in filter(None, attribute.split(".")):
        plugin = getattr(plugin, part)
    pm = plugin_manager(("simulator", plugin))
    settings = validate_settings(pm.hook.simulator_settings_model(), ref.settings, "simulator.settings")
    found = (pm, settings)
    _LOADED[ref.key] = found
    return found


def blender_paths_last() -> None:
    """Moves Blender's script folders to the end of ``sys.path`` (in a worker, before it imports
    anything else).

    A spawned process starts with its parent's ``sys.path``. Once the parent has imported the
    ``bpy`` wheel, that path begins with Blender's own script folders (``.../bpy/5.0/scripts/...``),
    whose pure-Python ``bpy`` package then shadows the compiled module and fails with
    ``No module named '_bpy'``. At the end they shadow nothing, and Blender puts them back in front
    when the worker imports ``bpy`` itself."""
    def blender_scripts(entry: str) -> bool:
        parts = Path(entry).parts
        return "bpy" in parts and "scripts" in parts[parts.index("bpy"):]

    moved = [entry for entry in sys.path if blender_scripts(entry)]
    if moved:
        sys.path[:] = [entry for entry in sys.path if entry not in moved] + moved


# ----------------------------------------------------------------- examples on the wire ---
@dataclass(frozen=True)
class WireTensor:
    """A CPU tensor as a numpy array while it travels from a worker to the run.

    Pickling a tensor writes its storage through ``torch.save`` (a zip archive per tensor),
    which costs about a millisecond per example; a numpy array pickles as one out-of-band buffer
    (protocol 5), and Ray's object store hands it to the run without copying it."""

    array: np.ndarray


def _map_tensors(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``value`` (examples, or the dicts, lists and tuples in them) with ``leaf`` applied to
    every other value inside."""
    if isinstance(value, Example):
        return dataclasses.replace(value, **{f.name: _map_tensors(getattr(value, f.name), leaf)
                                             for f in dataclasses.fields(value) if f.init})
    if type(value) is dict:
        return {k: _map_tensors(v, leaf) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_map_tensors(v, leaf) for v in value)
    return leaf(value)


def _tensor_to_wire(value: Any) -> Any:
    if (not isinstance(value, torch.Tensor) or value.device.type != "cpu" or value.layout != torch.strided
            or value.requires_grad):
        return value
    try:
        return WireTensor(value.resolve_conj().resolve_neg().numpy())
    except (TypeError, RuntimeError):  # a dtype numpy lacks (bfloat16): torch pickles it
        return value


def _wire_to_tensor(value: Any) -> Any:
    return torch.from_numpy(np.array(value.array, copy=True)) if isinstance(value, WireTensor) else value


def to_wire(value: Any) -> Any:
    """``value`` (examples, or the dicts and lists in them) with its CPU tensors as WireTensors."""
    return _map_tensors(value, _tensor_to_wire)


def from_wire(value: Any) -> Any:
    """The inverse of ``to_wire``: tensors in the run's own (writable) memory."""
    return _map_tensors(value, _wire_to_tensor)


def render_chunk(ref: SimulatorRef, records: list[dict[str, Any]]) -> list[Example]:
    """Render ``records`` with the simulator ``ref`` names (in a worker process)."""
    pm, settings = _load(ref)
    return list(pm.hook.render(scenes=records, settings=settings))


# ---------------------------------------------------------------------------- scheduling ---
@dataclass
class _Chunk:
    indices: list[int]
    attempt: int = 0


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


class Executor(ABC):
    """Renders batches of records; see the module's docstring."""

    kind = ""

    def __init__(self, settings: ExecutorSettings):
        self.settings = settings
        self.last_exception: BaseException | None = None
        """The last exception a render raised in this process (inline), for its traceback."""

    @property
    @abstractmethod
    def workers(self) -> int: ...

    def render(self, records: Sequence[dict[str, Any]], ref: SimulatorRef | None, inline: RenderFn,
               on_retry: RetryCallback | None = None) -> list[Example]:
        """Examples of ``records``, in order. ``inline`` renders in this process (the inline
        executor's way); ``ref`` is how workers build the simulator."""
        records = list(records)
        if not records:
            return []
        results: list[Example | None] = [None] * len(records)
        queue = deque(_Chunk(c) for c in split_contiguous(len(records), self.workers))
        self._begin(ref)
        while queue or self._running():
            while queue and self._has_capacity():
                chunk = queue.popleft()
                self._start(chunk, [records[i] for i in chunk.indices], ref, inline)
            for chunk, examples, reason in self._collect():
                if reason is None and examples is not None and len(examples) != len(chunk.indices):
                    # A broken plugin, not a passing fault: rendering again would only repeat it.
                    raise ExampleCountError(len(examples), len(chunk.indices))
                if reason is None and examples is not None:
                    for i, example in zip(chunk.indices, examples, strict=True):
                        if results[i] is not None:  # cannot happen: a chunk is started once per attempt
                            raise RuntimeError(f"scene {records[i].get('id')!r} was rendered twice")
                        results[i] = example
                    continue
                assert reason is not None
                if chunk.attempt >= self.settings.retries:
                    i = chunk.indices[0]
                    scene = records[i]
                    which = (f"scene {scene.get('id')!r}" if len(chunk.indices) == 1 else
                             f"scenes {[records[j].get('id') for j in chunk.indices]}")
                    raise RenderError(f"{which} failed to render {chunk.attempt + 1} time(s) "
                                      f"({self.kind} executor; last: {reason}); first scene: {_describe_scene(scene)}",
                                      scene, chunk.attempt + 1, reason) from self.last_exception
                ids = [records[i].get("id") for i in chunk.indices]
                if on_retry is not None:
                    on_retry({"event": "render_retry", "executor": self.kind, "scenes": ids,
                              "attempt": chunk.attempt + 1, "retries": self.settings.retries, "reason": reason})
                queue.extend(_Chunk([i], chunk.attempt + 1) for i in chunk.indices)
        missing = [records[i].get("id") for i, r in enumerate(results) if r is None]
        if missing:  # cannot happen: the loop ends only when every chunk has landed
            raise RuntimeError(f"scenes {missing} were never rendered")
        return [r for r in results if r is not None]

    # -- what a backend provides ---------------------------------------------------------------
    def _begin(self, ref: SimulatorRef | None) -> None:
        """Called before each batch (start workers, check ``ref``)."""
        return None

    @abstractmethod
    def _running(self) -> bool: ...

    @abstractmethod
    def _has_capacity(self) -> bool: ...

    @abstractmethod
    def _start(self, chunk: _Chunk, records: list[dict[str, Any]], ref: SimulatorRef | None,
               inline: RenderFn) -> None: ...

    @abstractmethod
    def _collect(self) -> list[tuple[_Chunk, list[Example] | None, str | None]]:
        """Waits for at least one started chunk to end: (chunk, examples, None) or
        (chunk, None, why it failed)."""

    def close(self) -> None:
        """Stops the workers (an executor is usable again afterwards: they restart)."""
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class InlineExecutor(Executor):
    """In the run's process: one ``render`` call per batch (a hang cannot be interrupted here)."""

    kind = "inline"

    def __init__(self, settings: ExecutorSettings):
        super().__init__(settings)
        self._done: list[tuple[_Chunk, list[Example] | None, str | None]] = []

    @property
    def workers(self) -> int:
        return 1

    def _running(self) -> bool:
        return bool(self._done)

    def _has_capacity(self) -> bool:
        return not self._done

    def _start(self, chunk: _Chunk, records: list[dict[str, Any]], ref: SimulatorRef | None,
               inline: RenderFn) -> None:
        try:
            self._done.append((chunk, list(inline(records)), None))
        except Exception as exc:
            self.last_exception = exc
            self._done.append((chunk, None, _error_text(exc)))

    def _collect(self) -> list[tuple[_Chunk, list[Example] | None, str | None]]:
        done, self._done = self._done, []
        return done


# ------------------------------------------------------------------------ local processes ---
STARTUP_SECONDS = 120.0
"""Allowed on top of ``render_timeout`` to a worker that has not yet loaded the simulator for a
job (starting a process, importing torch and the plugin): ``render_timeout`` is the render's own."""


def _worker_main(conn: Connection, threads: int) -> None:
    """A worker process: render each chunk it receives until told to stop (None) or orphaned.
    It answers ``("started", None)`` once the simulator is loaded, then the result."""
    blender_paths_last()
    torch.set_num_threads(threads)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        job = pickle.loads(message)
        if job is None:
            return
        ref, records = job
        try:
            _load(ref)
            conn.send_bytes(pickle.dumps(("started", None)))
            reply: tuple[str, Any] = ("ok", to_wire(render_chunk(ref, records)))
        except Exception as exc:
            reply = ("error", _error_text(exc))
        try:
            conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception as exc:  # an example that cannot be pickled
            conn.send_bytes(pickle.dumps(("error", f"cannot send the examples back: {_error_text(exc)}")))


@dataclass
class _Worker:
    process: Any
    conn: Connection
    chunk: _Chunk | None = None
    sent: float = 0.0
    started: float | None = None
    """When the worker said it began rendering the chunk (None: still loading)."""


class ProcessExecutor(Executor):
    """A pool of local worker processes, started on the first batch and kept between batches."""

    kind = "processes"

    def __init__(self, settings: ExecutorSettings):
        super().__init__(settings)
        self._pool: list[_Worker] = []
        self._context = multiprocessing.get_context(self.settings.start_method)
        self._size = self.settings.workers or os.cpu_count() or 1

    @property
    def workers(self) -> int:
        return self._size

    def _spawn(self) -> _Worker:
        # The workers share the machine's cores; a thread count the user pinned is kept.
        pinned = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(pinned) if pinned.isdigit() and int(pinned) > 0 else max(1, (os.cpu_count() or 1) // self._size)
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(target=_worker_main, args=(child, threads), daemon=True,
                                        name="autosim-render")
        process.start()
        child.close()
        return _Worker(process, parent)

    def _begin(self, ref: SimulatorRef | None) -> None:
        if ref is None:
            raise ValueError("the processes executor needs a simulator importable by its workers")
        while len(self._pool) < self._size:
            self._pool.append(self._spawn())

    def _running(self) -> bool:
        return any(w.chunk is not None for w in self._pool)

    def _has_capacity(self) -> bool:
        return any(w.chunk is None for w in self._pool)

    def _start(self, chunk: _Chunk, records: list[dict[str, Any]], ref: SimulatorRef | None,
               inline: RenderFn) -> None:
        worker = next(w for w in self._pool if w.chunk is None)
        worker.chunk, worker.sent, worker.started = chunk, time.monotonic(), None
        try:
            worker.conn.send_bytes(pickle.dumps((ref, records), protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, OSError):
            pass  # the worker died before the job reached it: _collect sees the dead process

    def _deadline(self, worker: _Worker) -> float:
        timeout = self.settings.render_timeout
        assert timeout is not None
        if worker.started is not None:
            return worker.started + timeout
        return worker.sent + STARTUP_SECONDS + timeout

    def _replace(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=10)
        worker.conn.close()
        fresh = self._spawn()
        worker.process, worker.conn, worker.chunk = fresh.process, fresh.conn, None

    def _collect(self) -> list[tuple[_Chunk, list[Example] | None, str | None]]:
        timeout = self.settings.render_timeout
        busy = [w for w in self._pool if w.chunk is not None]
        wait_for: float | None = None
        if timeout is not None:
            wait_for = max(0.0, min(self._deadline(w) for w in busy) - time.monotonic())
        wait([x for w in busy for x in (w.conn, w.process.sentinel)], timeout=wait_for)
        out: list[tuple[_Chunk, list[Example] | None, str | None]] = []
        for worker in busy:
            chunk = worker.chunk
            assert chunk is not None
            reason: str | None = None
            examples: list[Example] | None = None
            answered = False
            try:
                while not answered and worker.conn.poll():
                    status, payload = pickle.loads(worker.conn.recv_bytes())
                    if status == "started":
                        worker.started = time.monotonic()
                        continue
                    answered = True
                    if status == "ok":
                        examples = from_wire(payload)
                    else:
                        reason = str(payload)
            except (EOFError, OSError):
                worker.process.join(timeout=5)
                reason = f"the worker process died (exit code {worker.process.exitcode})"
            if not answered and reason is None:
                if not worker.process.is_alive():
                    reason = f"the worker process died (exit code {worker.process.exitcode})"
                elif timeout is not None and time.monotonic() >= self._deadline(worker):
                    reason = f"no result after render_timeout = {timeout:g} s (the worker was killed)"
                else:
                    continue
            if answered:
                worker.chunk = None  # an answer (result or exception): the worker is still good
            else:
                self._replace(worker)
            out.append((chunk, examples, reason))
        return out

    def close(self) -> None:
        for worker in self._pool:
            try:
                worker.conn.send_bytes(pickle.dumps(None))
            except (BrokenPipeError, OSError):
                pass
        for worker in self._pool:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.conn.close()
        self._pool.clear()


# ------------------------------------------------------------------------------------ Ray ---
def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def connect_ray(address: str | None = None) -> bool:
    """Joins the Ray this process already uses, else the cluster at ``address``, else starts a
    local Ray; True when this call started or joined one (the caller then shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return True


def ray_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 0))


class RenderActor:
    """A Ray actor holding one loaded simulator (Ray's counterpart of a worker process)."""

    def __init__(self, ref: SimulatorRef):
        blender_paths_last()
        _load(ref)

    def ready(self) -> bool:
        return True

    def render(self, ref: SimulatorRef, records: list[dict[str, Any]]) -> list[Example]:
        return to_wire(render_chunk(ref, records))


@dataclass
class _Actor:
    handle: Any
    ready: Any
    """The ObjectRef of its ``ready`` call until it answered, then None."""
    key: str
    created: float = 0.0
    task: Any = None
    chunk: _Chunk | None = None
    sent: float = 0.0


class RayExecutor(Executor):
    """Ray actors, one per worker (each loads the simulator once), on a local Ray started on
    demand or on the cluster at ``address``; examples come back through Ray's object store.

    A chunk goes only to an actor that has loaded the simulator, so ``render_timeout`` is the
    render's own; a hung actor is killed and replaced.
    """

    kind = "ray"

    def __init__(self, settings: ExecutorSettings):
        super().__init__(settings)
        if not ray_available():
            raise ValueError("executor.kind = 'ray' needs Ray: pip install 'autosim-core[ray]'")
        self._started_ray = False
        self._actor_class: Any = None
        self._size = settings.workers or 0
        self._actors: list[_Actor] = []
        self._ref: SimulatorRef | None = None

    @property
    def workers(self) -> int:
        self._connect()
        return self._size

    def _connect(self) -> None:
        import ray

        if connect_ray(self.settings.address):
            self._started_ray = True
        if self._actor_class is None:
            self._actor_class = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(RenderActor)
        if not self._size:
            self._size = max(1, ray_cpus())

    def _new_actor(self, ref: SimulatorRef) -> _Actor:
        handle = self._actor_class.remote(ref)
        return _Actor(handle, handle.ready.remote(), ref.key, time.monotonic())

    def _begin(self, ref: SimulatorRef | None) -> None:
        import ray

        if ref is None:
            raise ValueError("the ray executor needs a simulator importable by its workers")
        self._connect()
        self._ref = ref
        for actor in [a for a in self._actors if a.key != ref.key]:  # another simulator or settings
            ray.kill(actor.handle)
            self._actors.remove(actor)
        while len(self._actors) < self._size:
            self._actors.append(self._new_actor(ref))

    def _running(self) -> bool:
        return any(a.chunk is not None for a in self._actors)

    def _has_capacity(self) -> bool:
        import ray

        pending = [a.ready for a in self._actors if a.ready is not None]
        if pending:
            done, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
            for actor in self._actors:
                if actor.ready is not None and actor.ready in done:
                    self._check_ready(actor)
        return any(a.chunk is None and a.ready is None for a in self._actors)

    def _check_ready(self, actor: _Actor) -> None:
        """An actor whose start answered: usable, or (it failed to load the simulator) an error."""
        import ray

        try:
            ray.get(actor.ready)
        except ray.exceptions.RayError as exc:
            raise RuntimeError(f"a Ray worker could not load the simulator: {exc}") from None
        actor.ready = None

    def _start(self, chunk: _Chunk, records: list[dict[str, Any]], ref: SimulatorRef | None,
               inline: RenderFn) -> None:
        actor = next(a for a in self._actors if a.chunk is None and a.ready is None)
        actor.chunk, actor.sent = chunk, time.monotonic()
        actor.task = actor.handle.render.remote(ref, records)

    def _replace(self, actor: _Actor) -> None:
        import ray

        ray.kill(actor.handle)
        assert self._ref is not None
        fresh = self._new_actor(self._ref)
        actor.handle, actor.ready, actor.created, actor.task, actor.chunk = (fresh.handle, fresh.ready,
                                                                             fresh.created, None, None)

    def _check_starting(self) -> float | None:
        """Seconds left before the oldest actor still starting counts as stuck (None: none is)."""
        starting = [a.created for a in self._actors if a.ready is not None]
        if not starting:
            return None
        left = min(starting) + STARTUP_SECONDS - time.monotonic()
        if left <= 0 and not any(a.ready is None for a in self._actors):
            raise RuntimeError(f"Ray started none of the {len(self._actors)} render worker(s) in "
                               f"{STARTUP_SECONDS:g} s: each needs 1 CPU of the cluster "
                               f"({ray_cpus()} CPU(s) there, some may be held by other actors); "
                               "lower executor.workers or add nodes")
        return max(left, 0.1)

    def _collect(self) -> list[tuple[_Chunk, list[Example] | None, str | None]]:
        import ray

        timeout = self.settings.render_timeout
        busy = [a for a in self._actors if a.chunk is not None]
        waiting = [a.task for a in busy] + [a.ready for a in self._actors if a.ready is not None]
        wait_for = self._check_starting()
        if timeout is not None and busy:
            left = max(0.0, min(a.sent + timeout for a in busy) - time.monotonic())
            wait_for = left if wait_for is None else min(wait_for, left)
        ray.wait(waiting, num_returns=1, timeout=wait_for)
        out: list[tuple[_Chunk, list[Example] | None, str | None]] = []
        done, _ = ray.wait([a.task for a in busy], num_returns=len(busy), timeout=0)
        for actor in busy:
            chunk = actor.chunk
            assert chunk is not None
            if actor.task in done:
                try:
                    out.append((chunk, from_wire(ray.get(actor.task)), None))
                    actor.chunk = actor.task = None
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
                    out.append((chunk, None, _error_text(cause)))
                    actor.chunk = actor.task = None
                except ray.exceptions.RayError as exc:
                    out.append((chunk, None, f"the Ray worker died ({type(exc).__name__})"))
                    self._replace(actor)
            elif timeout is not None and time.monotonic() >= actor.sent + timeout:
                out.append((chunk, None, f"no result after render_timeout = {timeout:g} s (the Ray worker was killed)"))
                self._replace(actor)
        return out

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            for actor in self._actors:
                ray.kill(actor.handle)
        self._actors.clear()
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False
            self._actor_class = None


def make_executor(settings: ExecutorSettings) -> Executor:
    if settings.kind == "processes":
        return ProcessExecutor(settings)
    if settings.kind == "ray":
        return RayExecutor(settings)
    return InlineExecutor(settings)
