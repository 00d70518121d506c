"""What a worker and its pool share: what every worker does at its start, the wire format of
examples, the recipe of a worker and its answers, and the interface of a backend.

The pools themselves are in :mod:`autosim_core.workers`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
import os
import signal
import sys
import threading
import time
import traceback
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .records import Example

STARTUP_SECONDS = 120.0
"""Allowed on top of a job's timeout to a worker that has not yet begun it (starting a process,
importing torch and the plugin, building its state): the timeout is the job's own."""

# ---------------------------------------------------------------------- in every worker ---
def error_text(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def pinned_threads(workers: int) -> int:
    """Torch threads for each of ``workers`` sharing this machine: a thread count the user pinned
    (``OMP_NUM_THREADS``) is kept, otherwise the cores are divided between the workers."""
    pinned = os.environ.get("OMP_NUM_THREADS", "")
    return int(pinned) if pinned.isdigit() and int(pinned) > 0 else max(1, (os.cpu_count() or 1) // workers)


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


def extend_sys_path(entries: Iterable[str]) -> None:
    """Appends the parent's import path entries this process lacks (plugins that are importable
    there but not installed, as in tests)."""
    for entry in entries:
        if entry not in sys.path and os.path.isdir(entry):
            sys.path.append(entry)


def import_target(target: str) -> Any:
    """The object ``module`` or ``module:attribute.path`` names."""
    module_name, _, attribute = target.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in filter(None, attribute.split(".")):
        found = getattr(found, part)
    return found


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


# ------------------------------------------------------------------------------ recipes ---
@dataclass(frozen=True)
class Recipe:
    """What each worker of a pool is. ``init``, ``handle`` and ``spec`` must pickle (module-level
    functions) for processes and Ray; the inline backend calls them as they are."""

    handle: Callable[[Any, Any], Any]
    """(state, payload) -> result, in the worker; an exception fails the job, not the worker."""
    init: Callable[[Any], Any] | None = None
    """spec -> the worker's state, built once when the worker starts (None: no state)."""
    spec: Any = None
    threads: int | None = None
    """Torch threads in a worker process or actor (None: as the process starts)."""
    sys_path: tuple[str, ...] = ()
    """Import path entries a worker appends before it reads the recipe."""
    label: str = "worker"
    """What a worker does, in messages: ``render``, ``evaluation``, ``run``."""
    starts: str = "start"
    """What a worker failed to do when its ``init`` raised, in messages."""
    sends: str = "the result"
    """What a worker sends back, in messages."""
    daemon: bool = True
    """Whether a worker process is a daemon (one that starts processes of its own must not be)."""
    name: str = "autosim-worker"


def serve(recipe: Recipe, state: Any, init_error: tuple[str, str] | None, payload: Any) -> tuple[str, Any]:
    """A worker's answer to one job: ``("ok", result on the wire)`` or ``("error", (line, traceback))``."""
    if init_error is not None:
        return "error", init_error
    try:
        return "ok", to_wire(recipe.handle(state, payload))
    except Exception as exc:
        return "error", (error_text(exc), traceback.format_exc())


def build_state(recipe: Recipe) -> tuple[Any, tuple[str, str] | None]:
    """A worker's state, or (None, why it could not be built)."""
    try:
        return (None if recipe.init is None else recipe.init(recipe.spec)), None
    except Exception as exc:
        return None, (error_text(exc), traceback.format_exc())


PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal the kernel sends this process when its parent dies (Linux)."""


def die_with_parent(parent_alive: Any = None) -> None:
    """Make this worker process die when the process that started it dies, however it dies.

    On Linux the kernel sends SIGKILL when the parent exits (``PR_SET_PDEATHSIG``); a forkserver's
    worker has the forkserver as its parent, and the forkserver exits once its client is gone.
    ``parent_alive`` is the read end of a pipe whose only write end the parent holds: a thread
    waits on it and ends the process at its end of file, which also covers a parent that died
    before the signal was asked for, and systems without prctl."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl in this libc: the pipe alone
    if parent_alive is not None:
        threading.Thread(target=_exit_when_closed, args=(parent_alive,), name="parent-alive", daemon=True).start()


def _exit_when_closed(parent_alive: Any) -> None:
    try:
        while True:
            parent_alive.recv_bytes()
    except (EOFError, OSError):
        os._exit(70)  # the parent is gone (or let go of this worker): nothing is left to answer


def prepare(threads: int | None, sys_path: Sequence[str]) -> None:
    blender_paths_last()
    extend_sys_path(sys_path)
    if threads is not None:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- backends ---
@dataclass
class Reply:
    """What a backend heard from the worker in ``slot``: ``started`` (it began the job), ``ok``
    (value: the result on the wire), ``error`` (value: (line, detail)) or ``died`` (value: the
    cause, e.g. ``exit code 3``; the backend has already started a fresh worker there)."""

    slot: int
    status: str
    value: Any = None


class Backend(ABC):
    """Holds the workers of one pool, one per slot; :class:`WorkerPool` tells it what to do."""

    kind = ""
    noun = "worker"
    """The worker in messages: ``no result after ... (the worker was killed)``."""
    process_noun = "worker"
    """The worker that died, in messages: ``the worker process died (exit code 3)``."""
    reports_started = False
    """Whether the worker says when it begins a job (else it begins when it is sent)."""
    wire = True
    """Whether results arrive on the wire (``to_wire``), to be turned back by ``from_wire``."""

    def __init__(self, workers: int | None = None, *, start_method: str = "spawn", address: str | None = None,
                 most: int | None = None):
        self.requested = workers
        self.start_method = start_method
        self.address = address
        self.most = most
        self.recipe: Recipe | None = None

    @property
    def size(self) -> int:
        size = self._size()
        return max(1, min(size, self.most)) if self.most else size

    def _size(self) -> int:
        return self.requested or os.cpu_count() or 1

    def open(self, recipe: Recipe) -> None:
        """The recipe of the workers started from now on."""
        self.recipe = recipe

    def now(self) -> float:
        return time.monotonic()

    def ready(self, slot: int) -> bool:
        """Whether the worker in ``slot`` can take a job now."""
        return True

    def died_reason(self, cause: str) -> str:
        return f"the {self.process_noun} died ({cause})"

    def startup_left(self) -> float | None:
        """Seconds the pool may wait for workers still starting (None: none is); may raise when
        none could start."""
        return None

    @abstractmethod
    def start(self, slot: int) -> None:
        """Starts a worker in ``slot`` (replacing one that stopped)."""

    @abstractmethod
    def send(self, slot: int, payload: Any) -> None: ...

    @abstractmethod
    def wait(self, busy: Sequence[int], timeout: float | None) -> list[Reply]:
        """Waits (at most ``timeout`` seconds) until a busy worker answers or dies."""

    @abstractmethod
    def stop(self, slot: int) -> None:
        """Kills the worker in ``slot`` (its late answer is never read)."""

    @abstractmethod
    def close(self) -> None:
        """Stops every worker."""

    def shutdown(self) -> None:
        """Stops every worker and whatever the backend started for them (a local Ray)."""
        self.close()


