"""Telling a user that the hypergradient has become noise: when its norm stays below its own
standard error for several iterations in a row, psi is taking random steps, and the row and the
progress line say so with the likely cause and what to change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MEMORISED_RATIO = 0.1
"""A training loss below this fraction of the validation loss counts as memorised renders."""


def below_noise_warning(iterations: int, grad_norm: float, se_norm: float, train_loss: float | None,
                        val_loss: float | None) -> str:
    """The warning of a hypergradient below its standard error ``iterations`` times in a row."""
    head = (f"the hypergradient has stayed below its standard error for {iterations} iterations "
            f"(norm {grad_norm:.3g} against {se_norm:.3g}): psi is moving on noise")
    if train_loss is not None and val_loss is not None and train_loss < MEMORISED_RATIO * val_loss:
        return (f"{head}; the training loss {train_loss:.3g} is far below the validation loss {val_loss:.3g}, "
                "so the model has memorised the renders and their per-scene gradients vanish: lower "
                "[training].epochs, or raise scenes_per_iteration")
    return (f"{head}; the scenes disagree more than they agree: raise scenes_per_iteration or reuse_iterations, "
            "or lower lr (psi may also be near its optimum)")


@dataclass
class NoiseWatch:
    """Counts the iterations in a row whose hypergradient norm is below its standard error's."""

    patience: int
    """Iterations in a row before the warning; 0 turns the watch off."""
    in_row: int = 0

    def update(self, grad_norm: float, se_norm: float | None, train_loss: float | None,
               val_loss: float | None) -> str | None:
        """The warning for this iteration's row, or None."""
        if se_norm is None or not self.patience:
            return None
        self.in_row = self.in_row + 1 if grad_norm < se_norm else 0
        if self.in_row < self.patience:
            return None
        return below_noise_warning(self.in_row, grad_norm, se_norm, train_loss, val_loss)

    def state_dict(self) -> dict[str, Any]:
        return {"in_row": self.in_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.in_row = int(state.get("in_row", 0))
