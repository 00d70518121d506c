"""The maths of the hypergradient, as small pure functions on dicts of tensors.

theta, v and HVP results are dicts ``{name: tensor}`` with the shapes of the model's
parameters; conjugate gradient works on those dicts directly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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
