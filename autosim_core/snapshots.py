"""The psi a run hands over at fractions of its budget (``[final_training] at``): what
``autosim train --snapshots`` scores as the psi-quality curve. Kept in ``snapshots.json`` and in
the checkpoint, so they survive a kill and a resume."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import Budget
from .rundir import SNAPSHOTS, RunFolder


def budget_fraction(budget: Budget, iterations: int, images: int, seconds: float) -> float:
    """How much of the budget is spent: the largest share of any limit set."""
    shares = [used / limit for used, limit in ((iterations, budget.iterations), (images, budget.images),
                                              (seconds, budget.seconds)) if limit is not None]
    return max(shares)


class Snapshots:
    """The snapshots taken so far, in order of their fractions."""

    def __init__(self, folder: RunFolder, fractions: list[float]):
        self.folder = folder
        self.fractions = fractions
        self.taken: list[dict[str, Any]] = []

    def take(self, spent: float, snapshot: Callable[[], dict[str, Any]]) -> None:
        """A snapshot (``snapshot()``: the psi handed over now) for every fraction up to ``spent`` not
        taken yet; ``snapshots.json`` rewritten when there is one."""
        done = {s["at"] for s in self.taken}
        due = [f for f in self.fractions if f not in done and f <= spent]
        if due:
            now = snapshot()
            self.taken += [{"at": fraction, **now} for fraction in due]
            self.folder.write_json(SNAPSHOTS, self.taken)

    def resume(self, stored: list[dict[str, Any]], spent: float) -> None:
        """The checkpoint's snapshots, less those past ``spent`` (a budget grown on resume moves the
        fractions: they are taken again); the file is rewritten, as a kill between it and the
        checkpoint can leave it ahead."""
        self.taken = [s for s in stored if s["at"] <= spent]
        self.folder.write_json(SNAPSHOTS, self.taken)
