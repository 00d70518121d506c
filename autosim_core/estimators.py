"""The four hypergradient estimators of AutoSimulate (paper, Table 1).

Each computes a vector v in theta-space, then the per-sample scalars c_k = grad_theta l_k . v
by one jvp, then the score-function hypergradient

    g_psi = -(1/K) sum_k w_k (c_k - b_k) grad_psi log q_psi(s_k),

with b_k the batch mean of c (or the mean of the others, ``baseline = "loo"``) and w_k = 1,
or importance weights when the sum also runs over scenes drawn at earlier psi (reuse).

which the searcher *descends*. ``no-val`` uses no validation set and instead lowers the
model's own expected training loss: g_psi = (1/K) sum_k (l_k - b) grad_psi log q_psi(s_k).

The paper prints the approximate-quadratic row with the opposite sign of the other rows; with
a damped, positive-definite H, v = H g_val keeps the descent direction of the others (it is
the quadratic row with H^-1 replaced by H), so that sign is the one used here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel

from .builtin_settings import ApproxQuadraticSettings, QuadraticSettings
from .builtin_settings import EstimatorSettings as _Settings
from .hookspecs import hookimpl
from .hypergrad import (
    Baseline,
    Params,
    ScoreEstimate,
    conjugate_gradient,
    directional_derivatives,
    score_function_terms,
    tree_axpy,
    tree_norm,
)


@dataclass
class HypergradProblem:
    """What an estimator may use in one outer iteration.

    params:       theta (the trainable parameters after fine-tuning), detached.
    train_losses: theta -> per-sample training losses l(r(s_k), theta) of the N scenes the
                  score-function sum runs over (this iteration's K rendered examples, then any
                  reused ones), shape (N,); a pure function torch.func can transform.
    hvp:          v -> H v, H the Hessian of the mean training loss at ``params`` (on this
                  iteration's examples only).
    val_gradient: () -> grad_theta L_val(theta); None when the run has no validation set.
    log_prob:     () -> log q_psi(s_k) of the N scenes, shape (N,), differentiable in psi.
    psi:          the simulator's psi tensors (the learnable ones require grad).
    weights:      importance weights of the N scenes (mean 1); None when all were drawn from
                  q_psi.
    baseline:     "mean" (of the batch), "loo" (leave-one-out) or "none".
    """

    params: Params
    train_losses: Callable[[Params], torch.Tensor]
    hvp: Callable[[Params], Params]
    val_gradient: Callable[[], Params] | None
    log_prob: Callable[[], torch.Tensor]
    psi: dict[str, torch.Tensor]
    weights: torch.Tensor | None = None
    baseline: Baseline = "mean"

    def score_function(self, values: torch.Tensor) -> ScoreEstimate:
        """The score-function estimate of grad_psi E[f] from per-scene values f_k."""
        log_q = self.log_prob()
        # The model (and so the values) may live on a GPU; psi and log q stay on the CPU.
        return score_function_terms(values.to(log_q.device), log_q, self.psi, baseline=self.baseline,
                                    weights=self.weights)

    def require_val_gradient(self, estimator: str) -> Params:
        if self.val_gradient is None:
            raise ValueError(f"the {estimator!r} estimator needs a validation set")
        return self.val_gradient()


@dataclass
class Hypergrad:
    """A hypergradient to descend, with numbers worth logging about how it was obtained."""

    grad: dict[str, torch.Tensor]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    stderr: dict[str, torch.Tensor] | None = None
    """Standard error of each coordinate of ``grad``, from the spread of its per-scene terms."""


def _from_direction(problem: HypergradProblem, v: Params, diagnostics: dict[str, Any]) -> Hypergrad:
    c = directional_derivatives(problem.train_losses, problem.params, v)
    est = problem.score_function(-c)
    diagnostics.update(v_norm=tree_norm(v), c_mean=float(c.mean()), c_std=float(c.std()) if len(c) > 1 else 0.0)
    return Hypergrad(est.grad, diagnostics, est.stderr())


def quadratic(problem: HypergradProblem, *, damping: float = 0.01, max_iter: int = 10,
              tol: float = 1e-4) -> Hypergrad:
    """v = (H + damping I)^-1 g_val by conjugate gradient."""
    g_val = problem.require_val_gradient("quadratic")
    cg = conjugate_gradient(problem.hvp, g_val, damping=damping, max_iter=max_iter, tol=tol)
    diag = {"g_val_norm": tree_norm(g_val), "cg_iterations": cg.iterations,
            "cg_residual": cg.residual, "negative_curvature": cg.negative_curvature}
    return _from_direction(problem, cg.solution, diag)


def approx_quadratic(problem: HypergradProblem, *, damping: float = 0.0) -> Hypergrad:
    """v = (H + damping I) g_val: one HVP."""
    g_val = problem.require_val_gradient("approx-quadratic")
    hv = problem.hvp(g_val)
    v = tree_axpy(damping, g_val, hv) if damping else hv
    return _from_direction(problem, v, {"g_val_norm": tree_norm(g_val)})


def linear(problem: HypergradProblem) -> Hypergrad:
    """v = g_val: no HVP."""
    g_val = problem.require_val_gradient("linear")
    return _from_direction(problem, g_val, {"g_val_norm": tree_norm(g_val)})


def no_val(problem: HypergradProblem) -> Hypergrad:
    """Lower the model's own loss on the data it is trained on: no validation set."""
    with torch.no_grad():
        losses = problem.train_losses(problem.params).detach()
    est = problem.score_function(losses)
    return Hypergrad(est.grad, {"train_loss_mean": float(losses.mean())}, est.stderr())


class QuadraticEstimator:
    @hookimpl
    def estimator_settings_model(self) -> type[BaseModel]:
        return QuadraticSettings

    @hookimpl
    def estimate_hypergrad(self, problem: HypergradProblem, settings: QuadraticSettings) -> Hypergrad:
        return quadratic(problem, **settings.model_dump())


class ApproxQuadraticEstimator:
    @hookimpl
    def estimator_settings_model(self) -> type[BaseModel]:
        return ApproxQuadraticSettings

    @hookimpl
    def estimate_hypergrad(self, problem: HypergradProblem, settings: ApproxQuadraticSettings) -> Hypergrad:
        return approx_quadratic(problem, **settings.model_dump())


class LinearEstimator:
    @hookimpl
    def estimator_settings_model(self) -> type[BaseModel]:
        return _Settings

    @hookimpl
    def estimate_hypergrad(self, problem: HypergradProblem) -> Hypergrad:
        return linear(problem)


class NoValEstimator:
    @hookimpl
    def estimator_settings_model(self) -> type[BaseModel]:
        return _Settings

    @hookimpl
    def needs_validation(self) -> bool:
        return False

    @hookimpl
    def estimate_hypergrad(self, problem: HypergradProblem) -> Hypergrad:
        return no_val(problem)


quadratic_plugin = QuadraticEstimator()
approx_quadratic_plugin = ApproxQuadraticEstimator()
linear_plugin = LinearEstimator()
no_val_plugin = NoValEstimator()
