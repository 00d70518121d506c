"""An in-process stand-in for worker processes, for the tests of what the pools do with workers
that die, raise or hang: deterministic and without the seconds a real process takes to start.

:class:`FakeProcesses` takes the place of the ``processes`` backend (the ``fake_processes``
fixture of conftest.py). Its workers run the pool's real recipe in this process, with every
recipe, payload and result pickled on the way as a worker process's would be; the flaky
simulator's ``crash`` and ``hang`` become a worker's death (exit code and all) and a job that
never answers, and its clock is virtual: a pool waiting for a hung job moves it on to the
deadline at once.
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Sequence
from typing import Any

from autosim_core.workers import Backend, Reply, build_state, serve


class Died(BaseException):
    """The worker's process ended (``os._exit``); a BaseException, so no ``except Exception`` on the
    way (a render's retry, an evaluation's error report) takes it for an error of the job."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class Hung(BaseException):
    """The job never returns."""


def crash(code: int) -> None:
    raise Died(code)


def hang() -> None:
    raise Hung


class FakeProcesses(Backend):
    """In-process workers with a worker process's answers (see the module's docstring)."""

    kind = "processes"
    process_noun = "worker process"
    reports_started = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.clock = 0.0
        self.workers: dict[int, tuple[Any, Any, Any]] = {}
        self.replies: list[Reply] = []
        self.hung: set[int] = set()
        self.starts: list[int] = []
        """The slot of every worker started, in order: a replaced worker's slot twice."""
        self.jobs: Counter[int] = Counter()
        """Jobs sent to each slot."""

    def now(self) -> float:
        return self.clock

    def start(self, slot: int) -> None:
        recipe = pickle.loads(pickle.dumps(self.recipe))
        state, init_error = build_state(recipe)
        self.workers[slot] = (recipe, state, init_error)
        self.starts.append(slot)

    def send(self, slot: int, payload: Any) -> None:
        recipe, state, init_error = self.workers[slot]
        self.jobs[slot] += 1
        self.replies.append(Reply(slot, "started"))
        try:
            status, value = serve(recipe, state, init_error, pickle.loads(pickle.dumps(payload)))
        except Died as died:
            self.stop(slot)
            self.start(slot)
            self.replies.append(Reply(slot, "died", f"exit code {died.code}"))
            return
        except Hung:
            self.hung.add(slot)
            return
        self.replies.append(Reply(slot, status, pickle.loads(pickle.dumps(value, protocol=5))))

    def wait(self, busy: Sequence[int], timeout: float | None) -> list[Reply]:
        replies = [r for r in self.replies if r.slot in busy]
        self.replies = [r for r in self.replies if r.slot not in busy]
        if replies:
            return replies
        if timeout is None:
            raise AssertionError("every busy worker hangs and no timeout is set: the pool would wait forever")
        self.clock += timeout
        return []

    def stop(self, slot: int) -> None:
        self.workers.pop(slot, None)
        self.hung.discard(slot)
        self.replies = [r for r in self.replies if r.slot != slot]

    def close(self) -> None:
        self.workers.clear()
        self.hung.clear()
        self.replies = []
