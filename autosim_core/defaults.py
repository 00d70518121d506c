"""The core's default hook implementations, registered after every plugin so plugins win."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .hookspecs import hookimpl
from .hypergrad import Params, default_hvp
from .records import Batch, SceneBatch
from .space import ParameterSpace, Psi


class CoreDefaults:
    @hookimpl(trylast=True)
    def sample(self, space: ParameterSpace, psi: Psi, count: int, generator: torch.Generator) -> SceneBatch:
        latents = space.sample(psi, count, generator)
        return SceneBatch(latents, space.records(latents))

    @hookimpl(trylast=True)
    def log_prob(self, space: ParameterSpace, psi: Psi, scenes: SceneBatch) -> torch.Tensor:
        return space.log_prob(psi, scenes.latents)

    @hookimpl(trylast=True)
    def presets(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {}

    @hookimpl(trylast=True)
    def train_step(self, model: torch.nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
                   loss_fn: Callable[[Any, Any], torch.Tensor]) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch.inputs), batch.targets).mean()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    @hookimpl(trylast=True)
    def hvp(self, loss_fn: Callable[[Params], torch.Tensor], params: Params, vector: Params) -> Params:
        return default_hvp(loss_fn, params, vector)

    @hookimpl(trylast=True)
    def needs_validation(self) -> bool:
        return True


core_defaults = CoreDefaults()
