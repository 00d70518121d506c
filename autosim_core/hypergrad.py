"""The maths of the hypergradient, as small pure functions on dicts of tensors.

theta, v and HVP results are dicts ``{name: tensor}`` with the shapes of the model's
parameters; conjugate gradient works on those dicts directly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.func import grad, jvp
from torch.func import vjp as func_vjp

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


def hvp_forward_over_reverse(loss_fn: Callable[[Params], torch.Tensor], params: Params,
                             vector: Params) -> Params:
    """H v of a scalar loss by forward-over-reverse: the jvp of the gradient along v."""
    params = {k: p.detach() for k, p in params.items()}
    vector = {k: v.detach() for k, v in vector.items()}
    _, hv = jvp(grad(loss_fn), (params,), (vector,))
    return hv


def hvp_reverse_over_reverse(loss_fn: Callable[[Params], torch.Tensor], params: Params,
                             vector: Params) -> Params:
    """H v of a scalar loss by reverse-over-reverse: the gradient of (grad . v).

    H is symmetric, so the vector-Jacobian product of the gradient with v is H v. Plain
    autograd on fresh leaves: nothing reaches the ``.grad`` of the caller's tensors.
    """
    return _reverse_over_reverse_operator(loss_fn, params)(vector)


def _reverse_over_reverse_operator(loss_fn: Callable[[Params], torch.Tensor],
                                   params: Params) -> Callable[[Params], Params]:
    """v -> H v whose gradient graph is built on the first product and kept for the next ones."""
    leaves = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    names = list(leaves)
    first: list[torch.Tensor | None] = []

    def product(vector: Params) -> Params:
        with torch.enable_grad():
            if not first:
                loss = loss_fn(leaves)
                first.extend(torch.autograd.grad(loss, [leaves[k] for k in names], create_graph=True,
                                                 allow_unused=True))
            dot = sum((g * vector[k].detach()).sum() for k, g in zip(names, first, strict=True) if g is not None)
            if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
                return {k: torch.zeros_like(p) for k, p in leaves.items()}
            second = torch.autograd.grad(dot, [leaves[k] for k in names], retain_graph=True, allow_unused=True)
        return {k: (h.detach() if h is not None else torch.zeros_like(leaves[k]))
                for k, h in zip(names, second, strict=True)}

    return product


HVP_MODES: dict[str, Callable[[Callable[[Params], torch.Tensor], Params, Params], Params]] = {
    "forward-over-reverse": hvp_forward_over_reverse,
    "reverse-over-reverse": hvp_reverse_over_reverse,
}
DEFAULT_HVP_MODE = "reverse-over-reverse"
"""The faster of the two on CPU for convolutional models (plugins/autosim_unet/bench.py
measures both); a task that finds the other faster selects it through its ``hvp`` hook."""


def default_hvp(loss_fn: Callable[[Params], torch.Tensor], params: Params, vector: Params, *,
                mode: str = DEFAULT_HVP_MODE) -> Params:
    """H v of a scalar loss at ``params``, by the mode named (see ``HVP_MODES``)."""
    try:
        method = HVP_MODES[mode]
    except KeyError:
        raise ValueError(f"unknown HVP mode {mode!r}; allowed: {', '.join(HVP_MODES)}") from None
    return method(loss_fn, params, vector)


def hvp_operator(loss_fn: Callable[[Params], torch.Tensor], params: Params, *,
                 mode: str = DEFAULT_HVP_MODE) -> Callable[[Params], Params]:
    """v -> H v at fixed ``params``, for several products at the same point (conjugate gradient).

    In reverse-over-reverse mode the gradient's graph is built on the first product and kept:
    every later product is one backward pass through it, saving a forward and a backward pass
    each. The graph lives as long as the returned function.
    """
    if mode != "reverse-over-reverse":
        return lambda vector: default_hvp(loss_fn, params, vector, mode=mode)
    return _reverse_over_reverse_operator(loss_fn, params)


def ggn_operator(outputs_fn: Callable[[Params], Any], output_loss: Callable[[Any], torch.Tensor],
                 params: Params) -> Callable[[Params], Params]:
    """v -> G v at fixed ``params``, G = J^T H_out J the Gauss-Newton matrix of the scalar loss
    ``output_loss(outputs_fn(theta))``: J the Jacobian of the model's outputs in theta, H_out the
    Hessian of the loss in the outputs.

    Each product is one jvp of the model (J v), an HVP of the loss in output space (small: the
    outputs, not the network) and one vjp (J^T u) through the forward graph, which is built on the
    first product and kept for the next ones. No second-order pass through the network, and G is
    positive semi-definite wherever the loss is convex in the outputs (cross-entropy, squared
    error), so conjugate gradient meets no negative curvature. The model must be a pure function
    of theta for torch.func: BatchNorm in eval mode (running statistics) or GroupNorm.
    """
    params = {k: p.detach() for k, p in params.items()}
    built: list[Any] = []

    def product(vector: Params) -> Params:
        if not built:
            outputs, pullback = func_vjp(outputs_fn, params)
            built.extend([detach_tree(outputs), pullback])
        outputs, pullback = built
        vector = {k: v.detach() for k, v in vector.items()}
        _, jv = jvp(outputs_fn, (params,), (vector,))
        _, hjv = jvp(grad(output_loss), (outputs,), (jv,))
        (gv,) = pullback(hjv)
        return {k: g.detach() for k, g in gv.items()}

    return product


def detach_tree(tree: Any) -> Any:
    """A model's outputs cut from the graph: a tensor, or a list/tuple/dict of them."""
    if isinstance(tree, torch.Tensor):
        return tree.detach()
    if isinstance(tree, list | tuple):
        return type(tree)(detach_tree(t) for t in tree)
    if isinstance(tree, dict):
        return {k: detach_tree(v) for k, v in tree.items()}
    return tree


def directional_derivatives_jvp(per_sample_loss: Callable[[Params], torch.Tensor], params: Params,
                                direction: Params) -> torch.Tensor:
    """c_k = grad_theta l_k . v for every sample at once: one jvp of the loss vector."""
    params = {k: p.detach() for k, p in params.items()}
    direction = {k: v.detach() for k, v in direction.items()}
    _, c = jvp(per_sample_loss, (params,), (direction,))
    return c.detach()


def central_difference_step(params: Mapping[str, torch.Tensor], direction: Mapping[str, torch.Tensor]) -> float:
    """The step h of ``directional_derivatives_fd``: the move h v has length sqrt(eps), eps
    the machine epsilon of theta's dtype.

    The textbook cbrt(eps) balances rounding against the O(h^2) truncation of a smooth loss,
    but ReLU networks are not smooth at that scale: on the UNet a move of cbrt(eps) * ||theta||
    errs by 15 % of max |c_k|, and sqrt(eps) is near the measured best in float32.
    """
    dtype = next(iter(params.values())).dtype
    v_norm = tree_norm(direction)
    if v_norm == 0.0:
        return 0.0
    return torch.finfo(dtype).eps ** 0.5 / v_norm


def directional_derivatives_fd(per_sample_loss: Callable[[Params], torch.Tensor], params: Params,
                               direction: Params, *, step: float | None = None) -> torch.Tensor:
    """c_k = grad_theta l_k . v by a central difference of the loss vector along v:
    (l(theta + h v) - l(theta - h v)) / 2h, two forward passes and no backward pass.

    Half the cost of the jvp on the UNet on CPU, but not its accuracy: in float32 the rounding
    of the losses limits the error to a few 1e-3 of max |c_k|, 1-4 % of their spread across
    samples (what the score-function estimator uses); in float64 about 1e-7 of max |c_k|.
    """
    params = {k: p.detach() for k, p in params.items()}
    direction = {k: v.detach() for k, v in direction.items()}
    h = central_difference_step(params, direction) if step is None else step
    if h == 0.0:
        with torch.no_grad():
            return torch.zeros_like(per_sample_loss(params))
    with torch.no_grad():
        plus = per_sample_loss(tree_axpy(h, direction, params))
        minus = per_sample_loss(tree_axpy(-h, direction, params))
    return (plus - minus) / (2 * h)


CK_METHODS: dict[str, Callable[[Callable[[Params], torch.Tensor], Params, Params], torch.Tensor]] = {
    "jvp": directional_derivatives_jvp,
    "central-difference": directional_derivatives_fd,
}
DEFAULT_CK_METHOD = "jvp"
"""Exact to rounding; the central difference is cheaper but errs by a few % of the spread of
c_k in float32 (``directional_derivatives_fd``). A run's ``c_k = "auto"`` (``searchers.CkChoice``)
uses the central difference where a check against the jvp finds its error small."""


def directional_derivatives(per_sample_loss: Callable[[Params], torch.Tensor], params: Params,
                            direction: Params, *, method: str | None = None) -> torch.Tensor:
    """c_k = grad_theta l_k . v for every sample at once, by the method named (``CK_METHODS``;
    ``DEFAULT_CK_METHOD`` when None)."""
    method = DEFAULT_CK_METHOD if method is None else method
    try:
        fn = CK_METHODS[method]
    except KeyError:
        raise ValueError(f"unknown c_k method {method!r}; allowed: {', '.join(CK_METHODS)}") from None
    return fn(per_sample_loss, params, direction)


def error_over_stderr(estimate: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                      stderr: Mapping[str, torch.Tensor]) -> float:
    """max over coordinates of |estimate - reference| / stderr, over the coordinates whose standard
    error is positive (0 when there are none): how far an approximation moved a hypergradient, in
    units of that hypergradient's own noise."""
    worst = 0.0
    for k, se in stderr.items():
        positive = se > 0
        if positive.any():
            worst = max(worst, float(((estimate[k] - reference[k]).abs()[positive] / se[positive]).max()))
    return worst


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
