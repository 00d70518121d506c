"""The maths of the hypergradient, as small pure functions on dicts of tensors.

theta, v and HVP results are dicts ``{name: tensor}`` with the shapes of the model's
parameters; conjugate gradient works on those dicts directly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch.func import grad, jvp

# torch's first forward-mode call loads its jvp decompositions through torch.jit.script, which
# warns about its own deprecation; the warning says nothing about autosim or the user's code.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

Params = dict[str, torch.Tensor]


def tree_dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)  # type: ignore[return-value]


def tree_axpy(alpha: float | torch.Tensor, x: Mapping[str, torch.Tensor],
              y: Mapping[str, torch.Tensor]) -> Params:
    """alpha * x + y."""
    return {k: alpha * x[k] + y[k] for k in x}


def tree_norm(x: Mapping[str, torch.Tensor]) -> float:
    return float(tree_dot(x, x).sqrt())


def default_hvp(loss_fn: Callable[[Params], torch.Tensor], params: Params, vector: Params) -> Params:
    """H v of a scalar loss by forward-over-reverse: the jvp of the gradient along v."""
    params = {k: p.detach() for k, p in params.items()}
    vector = {k: v.detach() for k, v in vector.items()}
    _, hv = jvp(grad(loss_fn), (params,), (vector,))
    return hv


def directional_derivatives(per_sample_loss: Callable[[Params], torch.Tensor], params: Params,
                            direction: Params) -> torch.Tensor:
    """c_k = grad_theta l_k . v for every sample at once: one jvp of the loss vector."""
    params = {k: p.detach() for k, p in params.items()}
    direction = {k: v.detach() for k, v in direction.items()}
    _, c = jvp(per_sample_loss, (params,), (direction,))
    return c.detach()


def loss_gradient(loss_fn: Callable[[Params], torch.Tensor], params: Params) -> Params:
    params = {k: p.detach() for k, p in params.items()}
    return {k: g.detach() for k, g in grad(loss_fn)(params).items()}


@dataclass
class CGResult:
    solution: Params
    iterations: int
    residual: float
    """Relative residual ||b - A x|| / ||b|| of the returned solution."""
    negative_curvature: bool
    """CG met a direction p with p^T A p <= 0 and stopped there."""


def conjugate_gradient(matvec: Callable[[Params], Params], b: Params, *, damping: float = 0.0,
                       max_iter: int = 10, tol: float = 1e-6) -> CGResult:
    """Solve (A + damping I) x = b by conjugate gradient from x = 0.

    Stops after ``max_iter`` iterations, when the relative residual drops below ``tol``, or at
    the first direction of non-positive curvature. In the last case it returns the iterate
    reached so far, or ``b`` itself when that happens at the first step (the steepest-descent
    direction, the same v as the linear estimator), and flags it.
    """
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r = {k: v.clone() for k, v in b.items()}
    p = {k: v.clone() for k, v in b.items()}
    b_norm = tree_norm(b)
    if b_norm == 0.0:
        return CGResult(x, 0, 0.0, False)
    rs = tree_dot(r, r)
    iterations = 0
    for _ in range(max_iter):
        ap = matvec(p)
        if damping:
            ap = tree_axpy(damping, p, ap)
        curvature = tree_dot(p, ap)
        if curvature <= 0:
            if iterations == 0:
                return CGResult({k: v.clone() for k, v in b.items()}, 0, 1.0, True)
            return CGResult(x, iterations, float(rs.sqrt()) / b_norm, True)
        alpha = rs / curvature
        x = tree_axpy(alpha, p, x)
        r = tree_axpy(-alpha, ap, r)
        iterations += 1
        rs_new = tree_dot(r, r)
        if float(rs_new.sqrt()) / b_norm < tol:
            rs = rs_new
            break
        p = tree_axpy(rs_new / rs, p, r)
        rs = rs_new
    return CGResult(x, iterations, float(rs.sqrt()) / b_norm, False)


def score_function_gradient(values: torch.Tensor, log_prob: torch.Tensor,
                            psi: Mapping[str, torch.Tensor], *, baseline: bool = True) -> Params:
    """(1/K) sum_k (f_k - b) grad_psi log q_psi(s_k), b = mean of f (or 0 without baseline).

    This estimates grad_psi E_{s ~ q_psi}[f(s)]; ``log_prob`` must be differentiable in psi.
    Coordinates of psi that do not affect ``log_prob`` get a zero gradient.
    """
    values = values.detach()
    centred = values - values.mean() if baseline else values
    surrogate = (centred * log_prob).mean()
    keys = [k for k, v in psi.items() if v.requires_grad]
    grads = torch.autograd.grad(surrogate, [psi[k] for k in keys], allow_unused=True)
    return {k: (g if g is not None else torch.zeros_like(psi[k])).detach() for k, g in zip(keys, grads, strict=True)}


Baseline = Literal["mean", "loo", "none"]


def importance_weights(log_q_new: torch.Tensor, log_q_old: torch.Tensor, clip: float) -> torch.Tensor:
    """Self-normalised, clipped importance weights of scenes drawn from q_old, for q_new.

    The raw ratios q_new(s) / q_old(s) are clipped at ``clip`` and then divided by their mean,
    so the weights average 1. Clipping trades a small bias for a bounded variance when q_new
    has moved away from where a scene was drawn.
    """
    ratio = (log_q_new.detach().double() - log_q_old.detach().double()).exp().clamp(max=clip)
    return ratio / ratio.mean()


def baselines(values: torch.Tensor, kind: Baseline, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The baseline b_k subtracted from each f_k: the weighted batch mean (the same for every k),
    the weighted mean of the *other* samples (leave-one-out), or 0.

    With the batch mean, b depends on f_k itself, which biases the estimate by a factor
    (K - 1) / K; leaving f_k out removes that bias.
    """
    w = torch.ones_like(values) if weights is None else weights.to(values.dtype)
    if kind == "none":
        return torch.zeros_like(values)
    total, mass = (w * values).sum(), w.sum()
    if kind == "mean":
        return (total / mass).expand_as(values)
    if kind == "loo":
        return (total - w * values) / (mass - w)
    raise ValueError(f"unknown baseline {kind!r}; allowed: mean, loo, none")


def score_jacobian(log_prob: torch.Tensor, psi: Mapping[str, torch.Tensor]) -> Params:
    """grad_psi log q_psi(s_k) for every sample: {key: tensor of shape (K, *psi[key].shape)}
    for the coordinates that require grad.

    Column by column, so the cost grows with the (few) coordinates of psi, not with K: the
    vector-Jacobian product J^T u is linear in u, and differentiating it in u gives a column.
    """
    keys = [k for k, v in psi.items() if v.requires_grad]
    n = log_prob.shape[0]
    u = torch.zeros(n, dtype=log_prob.dtype, requires_grad=True)
    vjps = torch.autograd.grad(log_prob, [psi[k] for k in keys], grad_outputs=u, create_graph=True,
                               retain_graph=True, allow_unused=True)
    out: Params = {}
    for k, vjp in zip(keys, vjps, strict=True):
        shape = psi[k].shape
        if vjp is None or not vjp.requires_grad:
            out[k] = torch.zeros((n, *shape), dtype=psi[k].dtype)
            continue
        flat = vjp.reshape(-1)
        cols = []
        for i in range(flat.numel()):
            (col,) = torch.autograd.grad(flat[i], u, retain_graph=True, allow_unused=True)
            cols.append(col if col is not None else torch.zeros(n, dtype=log_prob.dtype))
        out[k] = torch.stack(cols, dim=1).reshape(n, *shape).detach().to(psi[k].dtype)
    return out


@dataclass
class ScoreEstimate:
    """A score-function gradient with its per-sample terms: grad = terms.mean(0)."""

    grad: Params
    terms: Params

    def stderr(self) -> Params:
        """Standard error of each coordinate of ``grad`` from the spread of the terms."""
        return {k: t.std(dim=0) / math.sqrt(t.shape[0]) if t.shape[0] > 1 else torch.zeros_like(t[0])
                for k, t in self.terms.items()}


def score_function_terms(values: torch.Tensor, log_prob: torch.Tensor, psi: Mapping[str, torch.Tensor], *,
                         baseline: Baseline = "mean", weights: torch.Tensor | None = None) -> ScoreEstimate:
    """(1/K) sum_k w_k (f_k - b_k) grad_psi log q_psi(s_k), kept term by term.

    ``weights`` (mean 1) are importance weights of scenes drawn from other distributions than
    q_psi; None means every scene was drawn from q_psi. With the batch-mean baseline and no
    weights this is ``score_function_gradient``.
    """
    values = values.detach()
    w = torch.ones_like(values) if weights is None else weights.detach().to(values.dtype)
    factor = w * (values - baselines(values, baseline, w))
    jac = score_jacobian(log_prob, psi)
    terms = {k: factor.reshape(-1, *([1] * (j.dim() - 1))).to(j.dtype) * j for k, j in jac.items()}
    return ScoreEstimate({k: t.mean(dim=0) for k, t in terms.items()}, terms)
