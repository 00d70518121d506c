"""The Ray backend of the worker layer: one Ray actor per worker."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .worker_protocol import STARTUP_SECONDS, Backend, Recipe, Reply, error_text, prepare, serve


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


class RayWorker:
    """A Ray actor holding one worker's state (Ray's counterpart of a worker process). An actor
    whose ``init`` raises dies: its ``ready`` call says why."""

    def __init__(self, recipe: Recipe):
        prepare(recipe.threads, recipe.sys_path)
        self.recipe = recipe
        self.state = None if recipe.init is None else recipe.init(recipe.spec)

    def ready(self) -> bool:
        return True

    def call(self, payload: Any) -> tuple[str, Any]:
        return serve(self.recipe, self.state, None, payload)


@dataclass
class _Actor:
    handle: Any
    ready: Any
    """The ObjectRef of its ``ready`` call until it answered, then None."""
    created: float
    task: Any = None


class RayBackend(Backend):
    """Ray actors holding one CPU each, on the Ray this process uses, else on the cluster at
    ``address``, else on a local Ray started on demand (and shut down by ``shutdown``). A job goes
    only to an actor that has built its state, so a job's timeout is its own."""

    kind = "ray"
    noun = "Ray worker"
    process_noun = "Ray worker"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not ray_available():
            raise ValueError("executor.kind = 'ray' needs Ray: pip install 'autosim-core[ray]'")
        self._started_ray = False
        self._actor_class: Any = None
        self._recipe_ref: Any = None
        self._actors: dict[int, _Actor] = {}
        self._resolved = 0

    def connect(self) -> None:
        import ray

        if connect_ray(self.address):
            self._started_ray = True
        if self._actor_class is None:
            self._actor_class = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(RayWorker)
        if not self._resolved:
            self._resolved = self.requested or max(1, ray_cpus())

    def _size(self) -> int:
        self.connect()
        return self._resolved

    def open(self, recipe: Recipe) -> None:
        import ray

        super().open(recipe)
        self.connect()
        self._recipe_ref = ray.put(recipe)

    def start(self, slot: int) -> None:
        handle = self._actor_class.remote(self._recipe_ref)
        self._actors[slot] = _Actor(handle, handle.ready.remote(), time.monotonic())

    def ready(self, slot: int) -> bool:
        import ray

        actor = self._actors[slot]
        if actor.ready is not None:
            done, _ = ray.wait([actor.ready], timeout=0)
            if not done:
                return False
            try:
                ray.get(actor.ready)
            except ray.exceptions.RayError as exc:
                assert self.recipe is not None
                raise RuntimeError(f"a Ray worker could not {self.recipe.starts}: {exc}") from None
            actor.ready = None
        return True

    def startup_left(self) -> float | None:
        starting = [a.created for a in self._actors.values() if a.ready is not None]
        if not starting:
            return None
        left = min(starting) + STARTUP_SECONDS - time.monotonic()
        if left <= 0 and not any(a.ready is None for a in self._actors.values()):
            assert self.recipe is not None
            raise RuntimeError(f"Ray started none of the {len(self._actors)} {self.recipe.label} worker(s) in "
                               f"{STARTUP_SECONDS:g} s: each needs 1 CPU of the cluster "
                               f"({ray_cpus()} CPU(s) there, some may be held by other actors); "
                               "lower executor.workers or add nodes")
        return max(left, 0.1)

    def send(self, slot: int, payload: Any) -> None:
        actor = self._actors[slot]
        actor.task = actor.handle.call.remote(payload)

    def wait(self, busy: Sequence[int], timeout: float | None) -> list[Reply]:
        import ray

        tasks = [self._actors[slot].task for slot in busy]
        starting = [a.ready for a in self._actors.values() if a.ready is not None]
        ray.wait(tasks + starting, num_returns=1, timeout=timeout)
        done, _ = ray.wait(tasks, num_returns=len(tasks), timeout=0) if tasks else ([], [])
        out: list[Reply] = []
        for slot, task in zip(busy, tasks, strict=True):
            if task not in done:
                continue
            self._actors[slot].task = None
            try:
                status, value = ray.get(task)
                out.append(Reply(slot, status, value))
            except ray.exceptions.RayTaskError as exc:  # the payload could not be read there
                cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
                out.append(Reply(slot, "error", (error_text(cause), str(exc))))
            except ray.exceptions.RayError as exc:
                self.stop(slot)
                self.start(slot)
                out.append(Reply(slot, "died", type(exc).__name__))
        return out

    def stop(self, slot: int) -> None:
        import ray

        actor = self._actors.pop(slot, None)
        if actor is not None and ray.is_initialized():
            ray.kill(actor.handle)

    def close(self) -> None:
        for slot in list(self._actors):
            self.stop(slot)

    def shutdown(self) -> None:
        import ray

        self.close()
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False
        self._actor_class = None
        self._resolved = 0
