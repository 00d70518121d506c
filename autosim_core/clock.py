"""A run's counters: images rendered for training and seconds per phase, with one writer.

The phases (render, train, hypergrad, eval) add up to the run's wall time: a phase timed
inside another keeps its own seconds and the outer one gets the rest. Work done elsewhere (an
evaluation in a worker) is booked with ``book``, so that every second counts once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

PHASES = ("render", "train", "hypergrad", "eval")

PhaseCallback = Callable[[str, bool], None]
"""(phase, started): told when a timed phase starts and ends."""


class Clock:
    """Images and seconds of one run (see the module's docstring)."""

    def __init__(self, on_phase: PhaseCallback | None = None):
        self.on_phase = on_phase
        self.images = 0
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.seconds_before = 0.0
        """Seconds of the run's earlier processes (a resumed run continues their clock)."""
        self._start = time.perf_counter()
        self._open: list[float] = []

    @property
    def elapsed(self) -> float:
        return self.seconds_before + (time.perf_counter() - self._start)

    def start(self) -> None:
        """The wall clock starts now (set-up is not part of a run's seconds)."""
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Books the block's seconds to ``phase`` (nested phases: see the module's docstring)."""
        start = time.perf_counter()
        self._open.append(0.0)
        if self.on_phase is not None:
            self.on_phase(phase, True)
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            nested = self._open.pop()
            self.seconds[phase] += seconds - nested
            if self._open:
                self._open[-1] += seconds
            if self.on_phase is not None:
                self.on_phase(phase, False)

    def count_images(self, count: int) -> None:
        self.images += count

    def book(self, wall: float, spent: dict[str, float]) -> None:
        """``wall`` seconds of work done elsewhere, split between the phases as ``spent`` (seconds
        per phase measured there) is; all to "train" when ``spent`` holds none."""
        total = sum(spent.values())
        for phase in self.seconds:
            self.seconds[phase] += wall * spent.get(phase, 0.0) / total if total > 0 else 0.0
        if total <= 0:
            self.seconds["train"] += wall

    def reset(self) -> None:
        """Counters back to zero (a worker's copy of a run measures each job on its own)."""
        self.images = 0
        self.seconds = dict.fromkeys(self.seconds, 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images, "seconds": dict(self.seconds), "elapsed": self.elapsed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.images = int(state["images"])
        self.seconds = {k: float(v) for k, v in state["seconds"].items()}
        self.seconds_before = float(state["elapsed"])
