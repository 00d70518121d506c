"""The AutoSimulate searcher (paper, Algorithm 1): one render + fine-tune + hypergradient step
per iteration."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from .estimators import Hypergrad, HypergradProblem
from .run import Run


class AutoSimulateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scenes_per_iteration: int = Field(32, ge=2, description="K: scenes rendered per iteration")
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(0.05, gt=0, description="step size of the psi optimiser")
    max_grad_norm: float | None = Field(None, gt=0, description="clip the hypergradient's norm")


class AutoSimulate:
    """Per iteration: sample K scenes from q_psi, render them, fine-tune the model on them
    (warm start), estimate d L_val / d psi with the run's estimator, take one optimiser step
    on psi, then evaluate the model on the validation set."""

    settings_model = AutoSimulateSettings

    def __init__(self, run: Run, settings: AutoSimulateSettings):
        self.run = run
        self.settings = settings
        learnable = list(run.space.learnable(run.psi).values())
        if not learnable:
            raise ValueError("the simulator's parameter space has no learnable parameter")
        if settings.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(learnable, lr=settings.lr)
        else:
            self.optimizer = torch.optim.SGD(learnable, lr=settings.lr)

    def step(self, iteration: int) -> dict[str, Any]:
        run = self.run
        model = run.model
        assert model is not None
        scenes, batch = run.render_training(run.psi, self.settings.scenes_per_iteration)
        train_loss = run.fine_tune(model, run.model_optimizer, batch)

        with run.timed("hypergrad"):
            model.eval()
            theta = run.theta(model)
            per_sample = run.functional_losses(model, batch)
            problem = HypergradProblem(
                params=theta,
                train_losses=per_sample,
                hvp=run.hvp_operator(per_sample, theta),
                val_gradient=(lambda: run.val_gradient(model)) if run.val is not None else None,
                log_prob=lambda: run.log_prob(run.psi, scenes),
                psi=run.psi,
            )
            estimate: Hypergrad = run.pm.hook.estimate_hypergrad(problem=problem, settings=run.est_settings)
            self.optimizer.zero_grad(set_to_none=True)
            for name, g in estimate.grad.items():
                if run.psi[name].requires_grad:
                    run.psi[name].grad = g.detach().clone()
            grad_norm = float(torch.sqrt(sum((g.detach() ** 2).sum() for g in estimate.grad.values())))
            if self.settings.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(list(run.space.learnable(run.psi).values()), self.settings.max_grad_norm)
            self.optimizer.step()
            run.space.project_(run.psi)

        row: dict[str, Any] = {"train_loss": train_loss, **run.validation_row(model)}
        row.update(psi=run.space.describe(run.psi),
                   estimator={"name": run.config.estimator.name, "grad_norm": grad_norm, **estimate.diagnostics})
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


class FixedSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scenes_per_iteration: int = Field(32, ge=1, description="scenes rendered per iteration")


class Fixed:
    """No search: every iteration renders K scenes from the starting psi and fine-tunes on
    them. The reference a learned psi has to beat with the same number of images."""

    settings_model = FixedSettings
    uses_estimator = False

    def __init__(self, run: Run, settings: FixedSettings):
        self.run = run
        self.settings = settings

    def step(self, iteration: int) -> dict[str, Any]:
        run = self.run
        assert run.model is not None
        _, batch = run.render_training(run.psi, self.settings.scenes_per_iteration)
        train_loss = run.fine_tune(run.model, run.model_optimizer, batch)
        return {"train_loss": train_loss, **run.validation_row(run.model), "psi": run.space.describe(run.psi)}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
