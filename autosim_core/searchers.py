"""The AutoSimulate searcher (paper, Algorithm 1): one render + fine-tune + hypergradient step
per iteration."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .builtin_settings import AutoSimulateSettings, FixedSettings
from .contracts import Hypergrad, HypergradProblem, SearchContext
from .hypergrad import CK_METHODS, Baseline, Params, importance_weights
from .noise_watch import NoiseWatch
from .pathwise import Pathwise, parameter_problems, pathwise_keys
from .records import Batch, SceneBatch
from .space import Floors, ParameterSpace, Psi


def _floors_hold(space: ParameterSpace, psi: Psi, floors: Floors) -> bool:
    moved = {k: v.detach().clone() for k, v in psi.items()}
    space.apply_floors_(moved, floors)
    return all(torch.allclose(moved[k], psi[k].detach(), rtol=0, atol=1e-6) for k in psi)


def trust_region_fraction(space: ParameterSpace, old: Psi, new: Psi, max_kl: float,
                          floors: Floors | None = None, iterations: int = 40) -> float:
    """The largest fraction a of the step old -> new (found by bisection) such that
    KL(q_old || q_{old + a (new - old)}) <= max_kl and the floors hold there; 1 when the full
    step already does. a = 0 always qualifies, so the result never breaks either bound."""

    def ok(a: float) -> bool:
        cand = {k: old[k] + a * (new[k] - old[k]) for k in old}
        if float(space.kl(old, cand)) > max_kl:
            return False
        return floors is None or _floors_hold(space, cand, floors)

    if ok(1.0):
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


class PsiStep:
    """One update of psi from a hypergradient: optional natural-gradient scaling, the
    optimiser's step, projection into the bounds, the floors, then the trust region."""

    def __init__(self, space: ParameterSpace, psi: Psi, settings: AutoSimulateSettings):
        self.space = space
        self.psi = psi
        self.settings = settings
        self.floors = settings.floors()
        learnable = space.learnable(psi)
        if not learnable:
            raise ValueError("the simulator's parameter space has no learnable parameter")
        # Adam moves a coordinate by about lr per step whatever its units: "scaled" steps give each
        # coordinate its own group, whose lr is in the unit of that coordinate's starting spread.
        if settings.step_units == "scaled":
            scales = space.natural_scales()
            groups = [{"params": [p], "lr": settings.lr * scales.get(k, 1.0)} for k, p in learnable.items()]
        else:
            groups = [{"params": list(learnable.values())}]
        if settings.optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(groups, lr=settings.lr)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=settings.lr)

    def __call__(self, grad: Params) -> dict[str, float]:
        space, psi, s = self.space, self.psi, self.settings
        learnable = space.learnable(psi)
        grad = {k: g for k, g in grad.items() if k in learnable}
        if s.natural_gradient:
            grad = space.natural_gradient(psi, grad)
        old = {k: v.detach().clone() for k, v in psi.items()}
        self.optimizer.zero_grad(set_to_none=True)
        for name, g in grad.items():
            psi[name].grad = g.detach().clone().to(psi[name].dtype)
        if s.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(learnable.values()), s.max_grad_norm)
        self.optimizer.step()
        space.project_(psi)
        space.apply_floors_(psi, self.floors)
        fraction = 1.0
        if s.max_kl is not None:
            new = {k: v.detach().clone() for k, v in psi.items()}
            fraction = trust_region_fraction(space, old, new, s.max_kl, self.floors)
            if fraction < 1.0:
                with torch.no_grad():
                    for k in psi:
                        psi[k].copy_(old[k] + fraction * (new[k] - old[k]))
        return {"kl": float(space.kl(old, {k: v.detach() for k, v in psi.items()})), "fraction": fraction}

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


CK_AUTO_TOLERANCE = 0.1
"""``c_k = "auto"`` keeps the central difference while it moves the hypergradient by at most this
many of its standard errors: independent errors of that size add at most 1 % to its variance."""
CK_AUTO_CHECK_EVERY = 10
"""``c_k = "auto"`` checks the central difference against the jvp on the first iteration and then
on every this-many-th."""


class CkChoice:
    """How a run computes c_k, iteration by iteration: the method named, or for "auto" the central
    difference, checked against the jvp on the first iteration and every ``CK_AUTO_CHECK_EVERY``-th
    after it; the first check whose error exceeds ``CK_AUTO_TOLERANCE`` standard errors switches
    the run to the jvp for good (the float32 rounding of the losses, or a loss too rough for the
    step, can make the difference wrong by more than the estimate's own noise)."""

    def __init__(self, setting: str):
        if setting != "auto" and setting not in CK_METHODS:
            raise ValueError(f"unknown c_k method {setting!r}; allowed: auto, {', '.join(CK_METHODS)}")
        self.auto = setting == "auto"
        self.method = "central-difference" if self.auto else setting
        self.calls = 0

    def next(self) -> tuple[str, bool]:
        """The method of the next estimate, and whether it is checked against the jvp."""
        check = self.auto and self.method != "jvp" and self.calls % CK_AUTO_CHECK_EVERY == 0
        self.calls += 1
        return self.method, check

    def update(self, error: float | None) -> bool:
        """Takes a check's error (in standard errors; None: no check ran); True when it switches to the jvp."""
        if error is None or not self.auto or self.method == "jvp" or error <= CK_AUTO_TOLERANCE:
            return False
        self.method = "jvp"
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method, "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method = state.get("method", self.method)
        self.calls = int(state.get("calls", self.calls))


def sobol_sampler(space: ParameterSpace, psi: Psi, count: int, generator: torch.Generator) -> SceneBatch:
    latents = space.sample_quasi(psi, count, generator)
    return SceneBatch(latents, space.records(latents))


@dataclass
class Rendered:
    """An iteration's scenes kept for reuse: the examples and log q of the psi they came from."""

    scenes: SceneBatch
    batch: Batch
    log_q: torch.Tensor

    def to_state(self) -> dict[str, Any]:
        return {"latents": self.scenes.latents, "records": self.scenes.records, "inputs": self.batch.inputs,
                "targets": self.batch.targets, "log_q": self.log_q}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Rendered:
        return cls(SceneBatch(state["latents"], state["records"]), Batch(state["inputs"], state["targets"]),
                   state["log_q"])


def _seeded_subset(total: int, count: int | None, seed: int) -> torch.Tensor | None:
    if count is None or count >= total:
        return None
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count].sort().values


def validation_subset(run: SearchContext, count: int | None, iteration: int) -> torch.Tensor | None:
    """The validation examples iteration ``iteration``'s gradient uses: ``count`` of them drawn
    without replacement from a stream seeded by the run's seed and the iteration (the same on a
    resumed run, and apart from the run's own stream), sorted; None for all."""
    if run.val is None:
        return None
    return _seeded_subset(len(run.val), count, run.config.seed * 1_000_003 + iteration)


CURVATURE_STREAM = 500_000_001
"""Offset of the curvature subsets' seeds from the validation subsets' (apart for any iteration
below it)."""


def curvature_subset(run: SearchContext, count: int | None, scenes: int, iteration: int) -> torch.Tensor | None:
    """The rows of iteration ``iteration``'s ``scenes`` training examples its curvature products
    use: ``count`` of them, drawn like ``validation_subset``'s from a stream of their own; None
    for all."""
    return _seeded_subset(scenes, count, run.config.seed * 1_000_003 + iteration + CURVATURE_STREAM)


def hypergrad_problem(run: SearchContext, model: torch.nn.Module, pool: Sequence[Rendered], *, baseline: Baseline,
                      reuse_clip: float, hvp: Callable[[Params], Params] | None = None,
                      val_gradient: Callable[[], Params] | None = None, chunk: int | None = None,
                      curvature_rows: torch.Tensor | None = None) -> HypergradProblem:
    """The estimators' problem at the model's theta over the scenes of ``pool``: the current
    iteration's first (the curvature's data unless ``hvp`` is given: all of them, or the rows
    ``curvature_rows``), then reused ones, importance-weighted against the psi they were drawn
    from. ``chunk`` splits each batch's loss function into pieces of that many examples (for
    batches too large for one pass)."""
    theta = run.theta(model)
    losses = [run.functional_losses(model, part) for r in pool
              for part in (r.batch.chunks(chunk) if chunk else [r.batch])]
    weights = None
    if len(pool) > 1:
        with torch.no_grad():
            log_q_now = torch.cat([run.log_prob(run.psi, r.scenes) for r in pool])
        weights = importance_weights(log_q_now, torch.cat([r.log_q for r in pool]), reuse_clip)
    curvature_batch = pool[0].batch if curvature_rows is None else pool[0].batch.select(curvature_rows)
    if hvp is None:
        if chunk:
            raise ValueError("a problem over chunked batches needs its own hvp")
        hvp = run.hvp_operator(losses[0] if curvature_rows is None else run.functional_losses(model, curvature_batch),
                               theta)
    # Built on its first product (``ggn_operator``): free for an estimator that does not use it.
    ggn = run.ggn_operator(model, curvature_batch, theta) if not chunk else _chunked_ggn(run, model, curvature_batch,
                                                                                          theta, chunk)
    if val_gradient is None and run.val is not None:
        def val_gradient() -> Params:
            return run.val_gradient(model)
    return HypergradProblem(
        params=theta,
        train_losses=lambda th: torch.cat([f(th) for f in losses]),
        hvp=hvp,
        val_gradient=val_gradient,
        log_prob=lambda: torch.cat([run.log_prob(run.psi, r.scenes) for r in pool]),
        psi=run.psi,
        weights=weights,
        baseline=baseline,
        ggn=ggn,
    )


def pathwise_for(run: SearchContext, model: torch.nn.Module, scenes: SceneBatch, chunk: int = 32) -> Pathwise:
    """The pathwise estimate over ``scenes`` (this iteration's) at the model's theta: the
    simulator's differentiable parameters, rendered again under autograd by the run, ``chunk``
    scenes at a time."""
    return Pathwise(run.space, run.psi, scenes, run.differentiable_parameters, run.render_differentiable,
                    lambda batch: run.functional_losses(model, batch), chunk)


def pathwise_problems(space: ParameterSpace, simulator: str, has_hook: Callable[[str], bool],
                      parameters: list[str] | None) -> list[str]:
    """Why ``pathwise = true`` cannot run with this simulator and space (one line each)."""
    where = f"searcher.settings.pathwise: simulator {simulator!r}"
    if not has_hook("render_differentiable"):
        return [f"{where} implements no 'render_differentiable' hook (its renders have no gradient); "
                "set pathwise = false"]
    if has_hook("sample"):
        return [f"{where} implements its own 'sample' hook; the pathwise estimate needs the core's sampler"]
    problems = [f"{where}: {p}" for p in parameter_problems(space, parameters)]
    if not problems and not pathwise_keys(space, space.init_psi(), parameters or []):
        problems.append(f"{where}: none of its differentiable parameters ({', '.join(parameters or [])}) is "
                        "learnable")
    return problems

def _chunked_ggn(run: SearchContext, model: torch.nn.Module, batch: Batch, theta: Params,
                 chunk: int) -> Callable[[Params], Params]:
    """G v of the mean loss over ``batch``, chunk by chunk, each chunk's graph freed after its product."""
    parts = batch.chunks(chunk)

    def product(vector: Params) -> Params:
        total = {k: torch.zeros_like(x) for k, x in theta.items()}
        for part in parts:
            gv = run.ggn_operator(model, part, theta)(vector)
            for k in total:
                total[k] += gv[k] * (len(part) / len(batch))
        return total

    return product


def _tree_lists(tree: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {k: v.detach().double().tolist() for k, v in tree.items()}


class AutoSimulate:
    """Per iteration: sample K scenes from q_psi, render them, fine-tune the model on them
    (warm start), estimate d L_val / d psi with the run's estimator (over these scenes and,
    with reuse, the previous iterations' ones), take one step on psi, then evaluate the model
    on the validation set."""

    settings_model = AutoSimulateSettings

    @staticmethod
    def plugin_problems(settings: AutoSimulateSettings, space: ParameterSpace, simulator: str,
                        has_hook: Callable[[str], bool], differentiable: list[str] | None) -> list[str]:
        """What in ``settings`` the run's simulator cannot do (checked with the config)."""
        return pathwise_problems(space, simulator, has_hook, differentiable) if settings.pathwise else []

    def __init__(self, run: SearchContext, settings: AutoSimulateSettings):
        self.run = run
        self.settings = settings
        if settings.sampling == "sobol" and run.simulator_samples:
            raise ValueError("searcher.settings.sampling: 'sobol' needs the core's sampler, but simulator "
                             f"{run.config.simulator.name!r} implements its own 'sample' hook; use 'iid'")
        self.psi_step = PsiStep(run.space, run.psi, settings)
        self.reused: deque[Rendered] = deque(maxlen=settings.reuse_iterations or None)
        self.noise_watch = NoiseWatch(settings.warn_below_noise)
        self.c_k = CkChoice(settings.c_k)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.psi_step.optimizer

    def step(self, iteration: int) -> dict[str, Any]:
        run, s = self.run, self.settings
        model = run.model
        assert model is not None
        sampler = sobol_sampler if s.sampling == "sobol" else None
        scenes, batch = run.render_training(run.psi, s.scenes_per_iteration, sampler=sampler)
        train_loss = run.fine_tune(model, run.model_optimizer, batch)

        with run.timed("hypergrad"):
            model.eval()
            with torch.no_grad():
                log_q_drawn = run.log_prob(run.psi, scenes).detach()
            pool = [Rendered(scenes, batch, log_q_drawn), *self.reused]
            rows = validation_subset(run, s.gradient_validation, iteration)
            val_gradient = None if rows is None else (lambda: run.val_gradient(model, rows))
            curvature_rows = curvature_subset(run, s.curvature_scenes, len(batch), iteration)
            problem = hypergrad_problem(run, model, pool, baseline=s.resolved_baseline(), reuse_clip=s.reuse_clip,
                                        val_gradient=val_gradient, curvature_rows=curvature_rows)
            if s.pathwise:
                problem.pathwise = pathwise_for(run, model, scenes)
            problem.c_k, problem.check_c_k = self.c_k.next()
            weights = problem.weights
            estimate: Hypergrad = run.estimate_hypergrad(problem)
            if self.c_k.update(estimate.diagnostics.get("c_k_error_over_se")):
                estimate.diagnostics["c_k_switched_to_jvp"] = True
            grad_norm = float(torch.sqrt(sum((g.detach() ** 2).sum() for g in estimate.grad.values())))
            step = self.psi_step(estimate.grad)
            if s.reuse_iterations:
                self.reused.appendleft(pool[0])

        info: dict[str, Any] = {"name": run.config.estimator.name, "grad_norm": grad_norm, **estimate.diagnostics,
                                "grad": _tree_lists(estimate.grad)}
        if estimate.stderr is not None:
            info["grad_se"] = _tree_lists(estimate.stderr)
            info["grad_se_norm"] = math.sqrt(sum(float((e.double() ** 2).sum()) for e in estimate.stderr.values()))
        if rows is not None:
            info["gradient_validation"] = len(rows)
        if curvature_rows is not None:
            info["curvature_scenes"] = len(curvature_rows)
        if problem.pathwise is not None:
            info["pathwise"] = problem.pathwise.keys if problem.pathwise.used else []
        if weights is not None:
            info["scenes_scored"] = len(weights)
            info["weights_ess"] = float(weights.sum() ** 2 / (weights**2).sum())
        row: dict[str, Any] = {"train_loss": train_loss, **run.validation_row(model)}
        row.update(psi=run.space.describe(run.psi), estimator=info, step=step)
        warning = self.noise_watch.update(grad_norm, info.get("grad_se_norm"), train_loss, row.get("val_loss"))
        if warning is not None:
            info["below_noise"] = self.noise_watch.in_row
            row["warning"] = warning
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.psi_step.state_dict(), "reused": [r.to_state() for r in self.reused],
                "noise_watch": self.noise_watch.state_dict(), "c_k": self.c_k.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.psi_step.load_state_dict(state["optimizer"])
        self.c_k.load_state_dict(state.get("c_k", {}))
        self.noise_watch.load_state_dict(state.get("noise_watch", {}))
        self.reused.clear()
        self.reused.extend(Rendered.from_state(r) for r in state.get("reused", []))


class Fixed:
    """No search: every iteration renders K scenes from the starting psi and fine-tunes on
    them. The reference a learned psi has to beat with the same number of images."""

    settings_model = FixedSettings
    uses_estimator = False

    def __init__(self, run: SearchContext, settings: FixedSettings):
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
