"""A regression task: the disc's position, size and brightness from its image."""

from __future__ import annotations

from typing import TYPE_CHECKING

from autosim_core import Batch, Example, hookimpl

if TYPE_CHECKING:
    import torch


class PoseRegression:                          # entry point: autosim.tasks: disc-pose
    @hookimpl
    def create_model(self) -> torch.nn.Module:
        import torch  # each hook imports torch when it first runs

        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))  # 32 x 32 RGB

    @hookimpl
    def collate(self, examples: list[Example]) -> Batch:
        import torch

        return Batch(torch.stack([e.image for e in examples]),
                     torch.stack([e.target for e in examples]))    # (K, 3)

    @hookimpl
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return ((outputs - targets) ** 2).sum(-1)                  # (K,): one loss per example

    @hookimpl
    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        rmse = float(((outputs - targets) ** 2).sum(-1).mean().sqrt())
        return {"metric": -rmse, "rmse": rmse}                     # higher is better


task = PoseRegression()
