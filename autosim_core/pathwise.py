"""The pathwise (reparameterisation) part of a hypergradient, for a simulator that can
differentiate its renders in some continuous scene values (``render_differentiable``).

Every estimator differentiates an expectation E_{s ~ q_psi}[f(x(s))] of a per-scene value f of
the rendered model input x(s): f = -grad_theta l(x, theta) . v for the validation-based ones
(v their direction in theta), f = l(x, theta) for ``no-val``. For a continuous parameter the
latent of scene k is u_k = loc + std eps_k; at fixed eps_k its gradient in psi is

    grad_psi f_k = (df / dx_k) (dx_k / dvalue_k) (dvalue_k / du_k) (du_k / dpsi),

the chain rule through the task's loss, the renderer and the family's map from latent to value.
Its mean over the K scenes is an unbiased estimate of grad_psi E[f] wherever f(x(s)) is
continuous in the value and differentiable almost everywhere, and it uses what each scene's
image says about the direction to move, where the score function only has the scene's f.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .hypergrad import Params, ScoreEstimate, score_jacobian
from .records import Batch, SceneBatch
from .space import ParameterSpace, Psi

DifferentiableRender = Callable[[list[dict], dict[str, torch.Tensor]], Batch]
"""(scene records, {parameter: values (n, repeat) requiring grad}) -> the collated batch, whose
inputs carry autograd to the values."""


def pathwise_keys(space: ParameterSpace, psi: Psi, parameters: Sequence[str]) -> list[str]:
    """The learnable psi coordinates of ``parameters``: those the pathwise estimate replaces."""
    names = set(parameters)
    return [k for k in space.learnable(psi) if k.split(".", 1)[0] in names]


def parameter_problems(space: ParameterSpace, parameters: Sequence[str] | None) -> list[str]:
    """What keeps the named parameters from a pathwise estimate: unknown, or not continuous."""
    if not parameters:
        return ["it declares no differentiable parameter"]
    problems = []
    for name in parameters:
        if name not in space.parameters:
            problems.append(f"it declares {name!r} differentiable, which is no parameter of its space")
        elif not space[name].continuous:
            problems.append(f"it declares {name!r} differentiable, but its {space[name].family} family "  # type: ignore[attr-defined]
                            "has no continuous values")
    return problems


@dataclass
class Pathwise:
    """The pathwise estimate over one iteration's rendered scenes.

    scenes:     the K scenes drawn from q_psi this iteration (their latents and records).
    parameters: the parameters the simulator differentiates; their learnable coordinates
                (``keys``) are estimated here, the others keep the score function.
    render:     renders records with the given values under autograd (the run's
                ``render_differentiable``).
    losses:     batch -> (theta -> per-sample training losses of the batch), as
                ``functional_losses``.
    chunk:      scenes rendered and differentiated at a time: the renderer's graph lives for
                one chunk.
    """

    space: ParameterSpace
    psi: Psi
    scenes: SceneBatch
    parameters: list[str]
    render: DifferentiableRender
    losses: Callable[[Batch], Callable[[Params], torch.Tensor]]
    chunk: int = 32
    used: bool = field(default=False, init=False)
    """Whether an estimator asked for the terms (a third-party one may not)."""

    @property
    def keys(self) -> list[str]:
        return pathwise_keys(self.space, self.psi, self.parameters)

    def terms(self, params: Params, direction: Params | None) -> Params:
        """Per-scene pathwise terms {key: (K, *psi[key].shape)} of grad_psi E[f]: f = -grad_theta l . v
        with v = ``direction``, or f = l when it is None."""
        self.used = True
        n = len(self.scenes)
        size = self.chunk
        parts = [self._chunk_terms(list(range(i, min(i + size, n))), params, direction) for i in range(0, n, size)]
        return {k: torch.cat([p[k] for p in parts]) for k in self.keys}

    def _chunk_terms(self, rows: list[int], params: Params, direction: Params | None) -> Params:
        index = torch.tensor(rows)
        latents = {name: self.scenes.latents[name][index] for name in self.parameters}
        families = {name: self.space[name] for name in self.parameters}
        with torch.enable_grad():
            values = {name: families[name].value_tensor(latents[name]).detach().requires_grad_(True)
                      for name in self.parameters}
            batch = self.render([self.scenes.records[i] for i in rows], values)
            df_dx = _input_gradient(self.losses, batch, params, direction)
            leaves = list(values.values())
            grads = torch.autograd.grad(batch.inputs, leaves, grad_outputs=df_dx.to(batch.inputs.dtype),
                                        allow_unused=True)
            df_dvalue = {name: (g if g is not None else torch.zeros_like(v)).detach()
                         for (name, v), g in zip(values.items(), grads, strict=True)}
            # f_k is, to first order in psi, sum over the scene's values of df/dvalue * value(u(psi)):
            # its per-scene gradient in psi is the chain rule through the family's latent and value.
            surrogate = sum((df_dvalue[name] * families[name].value_tensor(
                families[name].reparameterise(_psi_of(self.psi, name), latents[name]))
                            ).reshape(len(rows), -1).sum(1) for name in self.parameters)
            assert isinstance(surrogate, torch.Tensor)
            keys = self.keys
            return score_jacobian(surrogate.double(), {k: self.psi[k] for k in keys})


def _psi_of(psi: Psi, name: str) -> Psi:
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in psi.items() if k.startswith(prefix)}


def _input_gradient(losses: Callable[[Batch], Callable[[Params], torch.Tensor]], batch: Batch, params: Params,
                    direction: Params | None) -> torch.Tensor:
    """df_k / dx_k for every scene: f_k = -grad_theta l_k . v (one double backward, as an HVP
    by reverse-over-reverse), or f_k = l_k. Scene k's loss depends on its own input only, so
    the gradient of the sum is each scene's own."""
    x = batch.inputs.detach().requires_grad_(True)
    theta = {k: p.detach().requires_grad_(direction is not None) for k, p in params.items()}
    per_sample = losses(Batch(x, batch.targets))(theta)
    if direction is None:
        (dx,) = torch.autograd.grad(per_sample.sum(), x)
        return dx.detach()
    names = list(theta)
    g = torch.autograd.grad(per_sample.sum(), [theta[k] for k in names], create_graph=True, allow_unused=True)
    dot = sum((gi * direction[k].detach()).sum() for k, gi in zip(names, g, strict=True) if gi is not None)
    if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
        return torch.zeros_like(x)
    (dx,) = torch.autograd.grad(-dot, x, allow_unused=True)
    return torch.zeros_like(x) if dx is None else dx.detach()


def replace_terms(estimate: ScoreEstimate, terms: Params) -> ScoreEstimate:
    """The score-function estimate with the coordinates of ``terms`` replaced by them."""
    merged = {**estimate.terms, **{k: t.to(estimate.terms[k].dtype) if k in estimate.terms else t
                                   for k, t in terms.items()}}
    return ScoreEstimate({k: t.mean(dim=0) for k, t in merged.items()}, merged)
