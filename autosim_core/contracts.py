"""The types every layer of the core shares: what an estimator is given and returns, what a
searcher is, and the part of a run a searcher may use (``SearchContext``).

This module imports no other part of the loop, so estimators, searchers and the run all stand
on it without importing each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .hypergrad import DEFAULT_CK_METHOD, Baseline, Params, ScoreEstimate, score_function_terms
from .pathwise import Pathwise, replace_terms

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

    from .config import RunConfig
    from .records import Batch, SceneBatch
    from .space import ParameterSpace, Psi

Sampler = Callable[["ParameterSpace", "Psi", int, "torch.Generator"], "SceneBatch"]
"""(space, psi, count, generator) -> scenes: a sampler used instead of the ``sample`` hook."""


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
    pathwise:     the pathwise estimate of the coordinates the simulator differentiates, over
                  this iteration's scenes (``autosimulate``'s ``pathwise`` option); None: the
                  score function for every coordinate.
    ggn:          v -> G v, G = J^T H_out J the Gauss-Newton matrix of the mean training loss on
                  the same examples as ``hvp``; None where the run cannot split that loss into
                  the model's outputs and a loss of them.
    c_k:          how the estimators compute c_k = grad_theta l_k . v (``hypergrad.CK_METHODS``).
    check_c_k:    also compute c_k by the jvp, estimate from that exact c_k, and report how far
                  the method named moved the estimate (diagnostic ``c_k_error_over_se``).
    """

    params: Params
    train_losses: Callable[[Params], torch.Tensor]
    hvp: Callable[[Params], Params]
    val_gradient: Callable[[], Params] | None
    log_prob: Callable[[], torch.Tensor]
    psi: dict[str, torch.Tensor]
    weights: torch.Tensor | None = None
    baseline: Baseline = "mean"
    pathwise: Pathwise | None = None
    ggn: Callable[[Params], Params] | None = None
    c_k: str = DEFAULT_CK_METHOD
    check_c_k: bool = False

    def score_function(self, values: torch.Tensor) -> ScoreEstimate:
        """The score-function estimate of grad_psi E[f] from per-scene values f_k."""
        log_q = self.log_prob()
        # The model (and so the values) may live on a GPU; psi and log q stay on the CPU.
        return score_function_terms(values.to(log_q.device), log_q, self.psi, baseline=self.baseline,
                                    weights=self.weights)

    def pathwise_terms(self, direction: Params | None) -> Params | None:
        """The pathwise estimate of the coordinates ``pathwise`` covers (None without it), for the
        f that ``direction`` names (see ``estimate``)."""
        return None if self.pathwise is None else self.pathwise.terms(self.params, direction)

    def estimate(self, values: torch.Tensor, direction: Params | None,
                 pathwise_terms: Params | None = None) -> ScoreEstimate:
        """grad_psi E[f] from per-scene values f_k: the score function, except for the coordinates
        ``pathwise`` covers (if set), which get their pathwise estimate (``pathwise_terms`` when
        given, already computed for this direction). ``direction`` says what f is:
        f_k = -grad_theta l_k . v for v = ``direction``, or f_k = l_k when it is None."""
        est = self.score_function(values)
        if self.pathwise is None:
            return est
        return replace_terms(est, pathwise_terms if pathwise_terms is not None else self.pathwise_terms(direction))

    def curvature(self, kind: str, estimator: str) -> Callable[[Params], Params]:
        """The curvature products the estimator named asks for: ``hvp`` ("hessian") or ``ggn``
        ("gauss-newton")."""
        if kind == "hessian":
            return self.hvp
        if kind == "gauss-newton":
            if self.ggn is None:
                raise ValueError(f"the {estimator!r} estimator's curvature 'gauss-newton' needs the model's outputs "
                                 "apart from the loss, which this run does not provide; use curvature 'hessian'")
            return self.ggn
        raise ValueError(f"unknown curvature {kind!r}; allowed: hessian, gauss-newton")

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


class SearchContext(Protocol):
    """What a searcher may use of the run that drives it (documented in docs/plugins.md).

    The run owns the counters, the clock, the folder and the random streams; a searcher reads
    them and asks the run to render, train and evaluate, so that every image and second is
    booked once, in one place.
    """

    config: RunConfig
    """The run's validated config."""
    space: ParameterSpace
    """The parameter space psi is searched over (the config's start applied)."""
    psi: Psi
    """The psi tensors the run hands over at the end (the learnable ones require grad)."""
    model: torch.nn.Module | None
    model_optimizer: torch.optim.Optimizer
    generator: torch.Generator
    """The run's random stream: scenes, render seeds, minibatch orders."""
    val: Batch | None
    """The validation set (None without one)."""
    out_dir: Path

    @property
    def images(self) -> int: ...
    @property
    def iteration(self) -> int: ...

    def timed(self, phase: str) -> contextlib.AbstractContextManager[None]: ...
    def render_training(self, psi: Psi, count: int, space: ParameterSpace | None = None,
                        sampler: Sampler | None = None) -> tuple[SceneBatch, Batch]: ...
    def sample_scenes(self, space: ParameterSpace, psi: Psi, count: int, generator: torch.Generator,
                      ids: list[Any], sampler: Sampler | None = None) -> SceneBatch: ...
    def render_training_records(self, records: list[dict[str, Any]]) -> Batch: ...
    def render_differentiable(self, records: list[dict[str, Any]], values: dict[str, torch.Tensor]) -> Batch: ...
    @property
    def differentiable_parameters(self) -> list[str]:
        """The parameters the simulator's ``render_differentiable`` differentiates (none without it)."""
    def count_images(self, count: int) -> None: ...
    def book_seconds(self, seconds: dict[str, float]) -> None: ...
    def set_psi(self, values: Psi) -> None: ...
    def log_prob(self, psi: Psi, scenes: SceneBatch, space: ParameterSpace | None = None) -> torch.Tensor: ...
    def create_model(self) -> torch.nn.Module: ...
    def create_model_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer: ...
    def fine_tune(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch,
                  epochs: int | None = None, orders: list[torch.Tensor] | None = None) -> float: ...
    def epoch_orders(self, count: int, epochs: int | None = None) -> list[torch.Tensor]: ...
    def theta(self, model: torch.nn.Module) -> Params: ...
    def functional_losses(self, model: torch.nn.Module, batch: Batch) -> Callable[[Params], torch.Tensor]: ...
    def hvp_operator(self, per_sample: Callable[[Params], torch.Tensor],
                     theta: Params) -> Callable[[Params], Params]: ...
    def ggn_operator(self, model: torch.nn.Module, batch: Batch, theta: Params) -> Callable[[Params], Params]: ...
    def val_gradient(self, model: torch.nn.Module, gradient_rows: torch.Tensor | None = None) -> Params:
        """grad_theta of the mean validation loss, over the examples ``gradient_rows`` only when given."""
    def validation_row(self, model: torch.nn.Module) -> dict[str, Any]: ...
    def estimate_hypergrad(self, problem: HypergradProblem) -> Hypergrad: ...
    @property
    def simulator_samples(self) -> bool:
        """Whether the simulator draws its scenes itself (its own ``sample`` hook)."""
    def close(self) -> None: ...
    def record_event(self, event: dict[str, Any]) -> None: ...
    def resume_hint(self) -> str: ...


class Searcher(Protocol):
    """An outer search strategy (entry-point group ``autosim.searchers``).

    The class is constructed with the run (a :class:`SearchContext`) and its validated
    settings; ``step`` performs one iteration (AutoSimulate) or one objective evaluation
    (black-box searchers) and returns the fields of its history row (``val_loss``,
    ``val_metric``, ``psi`` and anything else); the run adds ``iteration``, ``images`` and the
    ``seconds`` fields. A searcher holding workers may define ``close()``, which the run calls
    when it stops, and one that computes results ahead of its steps ``drop_results_ahead()``,
    called after a step is skipped (NaN). A static ``plugin_problems(settings, space, simulator,
    has_hook, differentiable)`` returns the config errors of settings the simulator cannot serve.
    """

    settings_model: type[BaseModel] | None
    uses_estimator: bool
    """False for searchers that never call the run's estimator (default True)."""

    def __init__(self, run: SearchContext, settings: Any) -> None: ...

    def step(self, iteration: int) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
