"""The four hypergradient estimators of AutoSimulate (paper, Table 1).

Each computes a vector v in theta-space, then the per-sample scalars c_k = grad_theta l_k . v
(by one jvp, or by a central difference: the problem's ``c_k``), then the score-function hypergradient

    g_psi = -(1/K) sum_k w_k (c_k - b_k) grad_psi log q_psi(s_k),

with b_k the batch mean of c (or the mean of the others, ``baseline = "loo"``) and w_k = 1,
or importance weights when the sum also runs over scenes drawn at earlier psi (reuse).

which the searcher *descends*. ``no-val`` uses no validation set and instead lowers the
model's own expected training loss: g_psi = (1/K) sum_k (l_k - b) grad_psi log q_psi(s_k).

With the searcher's ``pathwise`` option the coordinates of psi that the simulator can
differentiate its renders in get the pathwise estimate of the same gradient instead, the chain
rule through the renderer (``autosim_core/pathwise.py``); ``HypergradProblem.estimate`` does both.

The paper prints the approximate-quadratic row with the opposite sign of the other rows; with
a damped, positive-definite H, v = H g_val keeps the descent direction of the others (it is
the quadratic row with H^-1 replaced by H), so that sign is the one used here.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel

from .builtin_settings import ApproxQuadraticSettings, QuadraticSettings
from .builtin_settings import EstimatorSettings as _Settings
from .contracts import Hypergrad, HypergradProblem
from .hookspecs import hookimpl
from .hypergrad import Params, conjugate_gradient, directional_derivatives, error_over_stderr, tree_axpy, tree_norm


def _from_direction(problem: HypergradProblem, v: Params, diagnostics: dict[str, Any]) -> Hypergrad:
    """The hypergradient from the direction v, c_k by the problem's method. Where the problem asks
    for a check, c_k also by the jvp: the exact estimate is returned and the approximation's error
    reported in units of its standard error."""
    c = directional_derivatives(problem.train_losses, problem.params, v, method=problem.c_k)
    # the pathwise part does not depend on c_k: once for both estimates of a checked iteration
    terms = problem.pathwise_terms(v)
    est = problem.estimate(-c, v, terms)
    diagnostics.update(c_k=problem.c_k)
    if problem.check_c_k and problem.c_k != "jvp":
        exact = directional_derivatives(problem.train_losses, problem.params, v, method="jvp")
        reference = problem.estimate(-exact, v, terms)
        diagnostics.update(c_k="jvp", c_k_error_over_se=error_over_stderr(est.grad, reference.grad,
                                                                          reference.stderr()))
        c, est = exact, reference
    diagnostics.update(v_norm=tree_norm(v), c_mean=float(c.mean()), c_std=float(c.std()) if len(c) > 1 else 0.0)
    return Hypergrad(est.grad, diagnostics, est.stderr())


def quadratic(problem: HypergradProblem, *, damping: float = 0.01, max_iter: int = 10,
              tol: float = 1e-4, curvature: str = "hessian") -> Hypergrad:
    """v = (H + damping I)^-1 g_val by conjugate gradient; H the Hessian or, with
    ``curvature = "gauss-newton"``, the Gauss-Newton matrix."""
    g_val = problem.require_val_gradient("quadratic")
    matvec = problem.curvature(curvature, "quadratic")
    cg = conjugate_gradient(matvec, g_val, damping=damping, max_iter=max_iter, tol=tol)
    diag = {"g_val_norm": tree_norm(g_val), "cg_iterations": cg.iterations,
            "cg_residual": cg.residual, "negative_curvature": cg.negative_curvature}
    return _from_direction(problem, cg.solution, diag)


def approx_quadratic(problem: HypergradProblem, *, damping: float = 0.0, curvature: str = "hessian") -> Hypergrad:
    """v = (H + damping I) g_val: one HVP (one Gauss-Newton product with ``curvature = "gauss-newton"``)."""
    g_val = problem.require_val_gradient("approx-quadratic")
    hv = problem.curvature(curvature, "approx-quadratic")(g_val)
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
    est = problem.estimate(losses, None)
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
