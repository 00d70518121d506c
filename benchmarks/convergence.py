"""How fast AutoSimulate's outer loop reaches a known optimal psi: bilevel problems written for it,
every validation-based estimator x variance-reduction setting x psi step, several seeds.

Each problem is a parameter space (the core's families) and a task model that is linear in theta,
fitted by squared error to a target of the rendered scene: per parameter b a block of features
phi_b(z) and a target y_b(z), z the parameter's value in the renderer's units. The inner problem
is solved exactly at every iteration: theta = theta_hat(psi) = argmin of the *population* training
loss at psi, from closed-form moments, so the benchmark measures the outer method alone (the
scenes drawn, the estimator, the step on psi), not the fine-tuning. The validation loss is the
population loss of a validation distribution; where that distribution is one of q_psi and the
target is the simulator's own, psi* is it exactly (theta_hat(psi_val) minimises the validation
loss, so the validation gradient vanishes there); otherwise psi* is found by L-BFGS on the
closed-form outer loss.

The loop is the core's own: ``AutoSimulate.step`` (sampling, reuse, the estimators of
``autosim_core.estimators`` through ``HypergradProblem``, ``PsiStep``) on a small ``SearchContext``
whose renderer and fine-tuning are the closed forms above.

Distances are in each coordinate's natural unit (``ParameterSpace.natural_scales``: a centre
divided by its starting std; log-stds and centred logits as they are), so that a problem
whose parameters are in degrees and metres counts both alike.

    python benchmarks/convergence.py --out docs/results/convergence.json [--seeds 5] [--iterations 150]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from autosim_core.builtin_settings import ApproxQuadraticSettings, AutoSimulateSettings, QuadraticSettings
from autosim_core.contracts import Hypergrad, HypergradProblem
from autosim_core.estimators import approx_quadratic_plugin, linear_plugin, quadratic_plugin
from autosim_core.hypergrad import Params, hvp_operator
from autosim_core.records import Batch, SceneBatch
from autosim_core.searchers import AutoSimulate
from autosim_core.space import Categorical, LogNormal, Normal, ParameterSpace, Psi

DT = torch.float64
EPSILON = 0.15
"""The aim: within this distance of psi* (natural units)."""


# ------------------------------------------------------------------------ the problems ---
def normal_moments(loc: torch.Tensor, std: torch.Tensor, n: int) -> list[torch.Tensor]:
    """E[z^0] ... E[z^n] of z ~ N(loc, std): E z^k = loc E z^(k-1) + (k-1) std^2 E z^(k-2)."""
    out = [torch.ones((), dtype=DT), loc]
    for k in range(2, n + 1):
        out.append(loc * out[k - 1] + (k - 1) * std**2 * out[k - 2])
    return out[: n + 1]


@dataclass
class Block:
    """One parameter of a problem: its family, the unit the renderer divides its value by,
    the powers of z that are the model's features, and the target as coefficients of powers
    of z (``{2: 1.0}`` is z^2) for the renders and for the validation data."""

    family: Normal | LogNormal | Categorical
    unit: float = 1.0
    centre: float = 0.0
    powers: tuple[int, ...] = (0, 1)
    target: dict[int, float] = field(default_factory=lambda: {2: 1.0})
    val_target: dict[int, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    """Categorical only: (x, y) of each choice; the features are powers of x, the target y."""

    def z(self, latent: torch.Tensor) -> torch.Tensor:
        value = latent.exp() if isinstance(self.family, LogNormal) else latent
        return (value - self.centre) / self.unit

    def moments(self, psi: Psi, n: int) -> list[torch.Tensor]:
        if isinstance(self.family, Categorical):
            p = torch.softmax(psi["logits"].to(DT), -1)
            x = torch.tensor([pt[0] for pt in self.points], dtype=DT)
            return [(p * x**k).sum() for k in range(n + 1)]
        loc, std = psi["loc"].to(DT), psi["log_std"].to(DT).exp()
        if isinstance(self.family, LogNormal):
            # z = (exp(u) - c) / unit with c = 0: E z^k = exp(k loc + k^2 std^2 / 2) / unit^k
            return [torch.exp(k * loc + k**2 * std**2 / 2) / self.unit**k for k in range(n + 1)]
        return normal_moments((loc - self.centre) / self.unit, std / self.unit, n)

    def features(self, latent: torch.Tensor) -> torch.Tensor:
        if isinstance(self.family, Categorical):
            x = torch.tensor([pt[0] for pt in self.points], dtype=DT)[latent.long()]
        else:
            x = self.z(latent.to(DT))
        return torch.stack([x**k for k in self.powers], -1)

    def targets(self, latent: torch.Tensor) -> torch.Tensor:
        if isinstance(self.family, Categorical):
            return torch.tensor([pt[1] for pt in self.points], dtype=DT)[latent.long()]
        z = self.z(latent.to(DT))
        return sum(c * z**k for k, c in self.target.items())  # type: ignore[return-value]

    def population(self, psi: Psi, validation: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """M = E[phi phi^T] and m = E[phi y] under q_psi (the validation target if asked)."""
        if isinstance(self.family, Categorical):
            p = torch.softmax(psi["logits"].to(DT), -1)
            x = torch.tensor([pt[0] for pt in self.points], dtype=DT)
            y = torch.tensor([pt[1] for pt in self.points], dtype=DT)
            phi = torch.stack([x**k for k in self.powers], -1)
            return (p[:, None, None] * phi[:, :, None] * phi[:, None, :]).sum(0), (p[:, None] * phi * y[:, None]).sum(0)
        target = self.val_target if validation and self.val_target is not None else self.target
        top = max(2 * max(self.powers), max(self.powers) + max(target))
        mom = self.moments(psi, top)
        big_m = torch.stack([torch.stack([mom[i + j] for j in self.powers]) for i in self.powers])
        small_m = torch.stack([sum(c * mom[i + k] for k, c in target.items()) for i in self.powers])
        return big_m, small_m


@dataclass
class Problem:
    name: str
    what: str
    blocks: dict[str, Block]
    validation: dict[str, dict[str, Any]]
    """The validation distribution: changes to the space (``ParameterSpace.override``)."""
    ridge: float = 0.0
    reachable: bool = True

    def __post_init__(self) -> None:
        self.space = ParameterSpace({k: b.family for k, b in self.blocks.items()})
        val_space = self.space.override(self.validation)
        self.psi_val = {k: v.detach().to(DT) for k, v in val_space.init_psi().items()}
        self.val_moments = {name: b.population(self._of(self.psi_val, name), validation=True)
                            for name, b in self.blocks.items()}

    @staticmethod
    def _of(psi: Psi, name: str) -> Psi:
        return {k.split(".", 1)[1]: v for k, v in psi.items() if k.startswith(name + ".")}

    def theta_hat(self, psi: Psi) -> Params:
        """theta = {"theta": (blocks, features)}, one row per block: (M + ridge I)^-1 m."""
        rows = []
        for name, b in self.blocks.items():
            big_m, small_m = b.population(self._of(psi, name))
            rows.append(torch.linalg.solve(big_m + self.ridge * torch.eye(len(b.powers), dtype=DT), small_m))
        return {"theta": torch.stack(rows)}

    def val_loss(self, theta: Params) -> torch.Tensor:
        """The population validation loss up to its constant: 0.5 t^T (M + ridge) t - t^T m."""
        total = torch.zeros((), dtype=DT)
        for t, (big_m, small_m) in zip(theta["theta"], self.val_moments.values(), strict=True):
            total = total + 0.5 * t @ (big_m + self.ridge * torch.eye(len(t), dtype=DT)) @ t - t @ small_m
        return total

    def val_gradient(self, theta: Params) -> Params:
        return {"theta": torch.stack([(big_m + self.ridge * torch.eye(len(t), dtype=DT)) @ t - small_m
                                      for t, (big_m, small_m) in zip(theta["theta"], self.val_moments.values(),
                                                                     strict=True)])}

    def per_sample(self, latents: dict[str, torch.Tensor]) -> Callable[[Params], torch.Tensor]:
        """theta -> the per-scene training losses, all blocks in one tensor expression (the
        estimators differentiate it with torch.func, whose cost grows with the operations)."""
        feats = torch.stack([b.features(latents[name][:, 0]) for name, b in self.blocks.items()], 1)
        targets = torch.stack([b.targets(latents[name][:, 0]) for name, b in self.blocks.items()], 1)
        ridge = self.ridge

        def losses(theta: Params) -> torch.Tensor:
            residual = torch.einsum("nbd,bd->nb", feats, theta["theta"]).sub(targets)
            out = (residual * residual).sum(-1).mul(0.5)
            return out + (theta["theta"] * theta["theta"]).sum().mul(0.5 * ridge) if ridge else out

        return losses

    def outer(self, psi: Psi) -> torch.Tensor:
        return self.val_loss(self.theta_hat(psi))

    def optimum(self) -> Psi:
        """psi_val where it is the optimum, else L-BFGS on the closed-form outer loss from psi_val."""
        if self.reachable and not self.numeric_optimum:
            return self.psi_val
        learn = self.space.learnable(self.psi_val)
        p = {k: v.clone().requires_grad_(k in learn) for k, v in self.psi_val.items()}
        opt = torch.optim.LBFGS([p[k] for k in learn], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-16,
                                line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = self.outer(p)
            loss.backward()
            return loss

        for _ in range(5):
            opt.step(closure)
        return {k: v.detach() for k, v in p.items()}

    @property
    def numeric_optimum(self) -> bool:
        return any(b.val_target is not None for b in self.blocks.values())


def distance(space: ParameterSpace, psi: Psi, target: Psi, scales: dict[str, float]) -> float:
    total = 0.0
    for k, v in space.learnable(psi).items():
        d = (v.detach().to(DT) - target[k].to(DT)) / scales[k]
        if k.endswith(".logits"):
            d = d - d.mean()
        total += float((d**2).sum())
    return math.sqrt(total)


def problems() -> list[Problem]:
    return [
        Problem("gauss-1d", "one Normal; a line fitted to a parabola (misspecified model)",
                {"x": Block(Normal(mean=0.8, std=0.6))}, {"x": {"mean": 0.2, "std": 1.0}}),
        Problem("gauss-1d-ridge", "one Normal; a line fitted to a line, ridge 0.2 (well-specified model)",
                {"x": Block(Normal(mean=0.8, std=0.6), target={0: -0.5, 1: 1.5})}, {"x": {"mean": 0.2, "std": 1.0}},
                ridge=0.2),
        Problem("lognormal-1d", "one LogNormal; a line fitted to a parabola",
                {"x": Block(LogNormal(median=1.0, std=0.5))}, {"x": {"median": 1.5, "std": 0.3}}),
        Problem("mixed-4d", "two Normals and two LogNormals in different units (degrees, metres, watts, metres)",
                {"angle": Block(Normal(mean=30.0, std=10.0), unit=10.0, centre=30.0),
                 "offset": Block(Normal(mean=0.0, std=0.05), unit=0.05),
                 "power": Block(LogNormal(median=5.0, std=0.4), unit=5.0),
                 "size": Block(LogNormal(median=0.2, std=0.5), unit=0.2)},
                {"angle": {"mean": 40.0, "std": 8.0}, "offset": {"mean": 0.03, "std": 0.04},
                 "power": {"median": 6.5, "std": 0.5}, "size": {"median": 0.25, "std": 0.4}}),
        Problem("categorical", "one 3-way categorical; a line fitted to three points, weighted by the choices",
                {"kind": Block(Categorical(choices=["a", "b", "c"]), points=((-1.0, 1.0), (0.0, -0.5), (2.0, 2.0)))},
                {"kind": {"probs": [0.2, 0.5, 0.3]}}),
        Problem("sim-gap", "one Normal; the validation labels have a term the renders lack (z^2 + 0.3 z^3), "
                           "its best line still reachable: psi* by L-BFGS, not psi_val",
                {"x": Block(Normal(mean=0.8, std=0.6), val_target={2: 1.0, 3: 0.3})},
                {"x": {"mean": 0.2, "std": 1.0}}),
        Problem("unreachable", "one Normal; a quadratic fitted to a cubic, validation labels z^3 + z^2 / 2: no psi "
                               "fits them, psi* by L-BFGS",
                {"x": Block(Normal(mean=0.8, std=0.6), powers=(0, 1, 2), target={3: 1.0},
                            val_target={3: 1.0, 2: 0.5, 1: -0.5})},
                {"x": {"mean": 0.2, "std": 1.0}}, reachable=False),
    ]


# --------------------------------------------------------------------- the search context ---
class LinearModel(torch.nn.Module):
    def __init__(self, problem: Problem):
        super().__init__()
        widths = {len(b.powers) for b in problem.blocks.values()}
        assert len(widths) == 1, "every block of a problem has as many features"
        self.theta = torch.nn.Parameter(torch.zeros(len(problem.blocks), widths.pop(), dtype=DT))

    def named_theta(self) -> Params:
        return {"theta": self.theta.detach()}


ESTIMATORS: dict[str, Callable[[HypergradProblem], Hypergrad]] = {
    "quadratic": lambda p: quadratic_plugin.estimate_hypergrad(p, QuadraticSettings()),
    "approx-quadratic": lambda p: approx_quadratic_plugin.estimate_hypergrad(p, ApproxQuadraticSettings()),
    "linear": lambda p: linear_plugin.estimate_hypergrad(p),
}


class ClosedFormRun:
    """The part of a run ``AutoSimulate`` uses: render = the scenes' features, fine-tune = the
    closed-form theta_hat(psi), validation = the population loss of the validation distribution."""

    def __init__(self, problem: Problem, estimator: str, seed: int):
        self.problem = problem
        self.space = problem.space
        self.psi = {k: v.detach().to(DT).requires_grad_(v.requires_grad) for k, v in self.space.init_psi().items()}
        self.model = LinearModel(problem)
        self.model_optimizer = None
        self.generator = torch.Generator().manual_seed(seed)
        self.val = True
        self.config = SimpleNamespace(estimator=SimpleNamespace(name=estimator),
                                      simulator=SimpleNamespace(name=problem.name))
        self.simulator_samples = False
        self.estimator = ESTIMATORS[estimator]
        self.images = 0

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        yield

    def render_training(self, psi: Psi, count: int, space: ParameterSpace | None = None,
                        sampler: Any = None) -> tuple[SceneBatch, Batch]:
        if sampler is not None:
            scenes = sampler(self.space, psi, count, self.generator)
        else:
            scenes = SceneBatch(self.space.sample(psi, count, self.generator), [])
        self.images += count
        # The batch's "targets" are its per-sample loss function: the closed forms need no tensors.
        return scenes, Batch(torch.zeros(count, 0), self.problem.per_sample(scenes.latents))

    def fine_tune(self, model: LinearModel, optimizer: Any, batch: Batch, *args: Any) -> float:
        with torch.no_grad():
            model.theta.copy_(self.problem.theta_hat({k: v.detach() for k, v in self.psi.items()})["theta"])
        return float(batch.targets(model.named_theta()).mean())

    def log_prob(self, psi: Psi, scenes: SceneBatch, space: ParameterSpace | None = None) -> torch.Tensor:
        return self.space.log_prob(psi, scenes.latents)

    def theta(self, model: LinearModel) -> Params:
        return model.named_theta()

    def functional_losses(self, model: LinearModel, batch: Batch) -> Callable[[Params], torch.Tensor]:
        return batch.targets

    def hvp_operator(self, per_sample: Callable[[Params], torch.Tensor], theta: Params) -> Callable[[Params], Params]:
        return hvp_operator(lambda th: per_sample(th).mean(), theta)

    def ggn_operator(self, model: LinearModel, batch: Batch, theta: Params) -> Callable[[Params], Params]:
        """The model is linear in theta and the loss squared error (plus a ridge on theta), so its
        Gauss-Newton matrix is its Hessian exactly: the "gauss-newton" curvature changes nothing here."""
        return self.hvp_operator(batch.targets, theta)

    def val_gradient(self, model: LinearModel) -> Params:
        return self.problem.val_gradient(model.named_theta())

    def validation_row(self, model: LinearModel) -> dict[str, Any]:
        loss = float(self.problem.val_loss(model.named_theta()))
        return {"val_loss": loss, "val_metric": -loss}

    def estimate_hypergrad(self, problem: HypergradProblem) -> Hypergrad:
        return self.estimator(problem)


# --------------------------------------------------------------------------- the grid ---
VARIANCE = {
    "iid+loo": {"sampling": "iid", "baseline": "loo", "reuse_iterations": 0},
    "sobol+reuse3": {"sampling": "sobol", "reuse_iterations": 3},
}
STEPS = {
    "adam-0.05-raw": {"optimizer": "adam", "lr": 0.05, "step_units": "raw"},
    "adam-0.05-scaled": {"optimizer": "adam", "lr": 0.05, "step_units": "scaled"},
    "adam-0.1-scaled": {"optimizer": "adam", "lr": 0.1, "step_units": "scaled"},
    "sgd-natural-kl0.01": {"optimizer": "sgd", "lr": 1.0, "natural_gradient": True, "max_kl": 0.01,
                           "step_units": "raw"},
}


def grid(size: str = "full") -> list[tuple[str, str, str]]:
    """Per estimator, "full": every variance setting with every step (the whole product, about 40
    minutes of one core for the seven problems); "small": Sobol + reuse of 3 with Adam at lr 0.05
    in raw and in scaled units, for a machine too busy for the full grid."""
    if size == "small":
        pairs = [("sobol+reuse3", s) for s in ("adam-0.05-raw", "adam-0.05-scaled")]
    else:
        pairs = [(v, s) for v in VARIANCE for s in STEPS]
    return [(est, v, s) for est in ESTIMATORS for v, s in pairs]


def one_run(problem: Problem, target: Psi, estimator: str, variance: str, step: str, seed: int,
            iterations: int) -> dict[str, Any]:
    settings = AutoSimulateSettings(**VARIANCE[variance], **STEPS[step])
    run = ClosedFormRun(problem, estimator, seed)
    searcher = AutoSimulate(run, settings)  # type: ignore[arg-type]
    scales = problem.space.natural_scales()
    path = [distance(problem.space, run.psi, target, scales)]
    start, cpu = time.perf_counter(), time.process_time()
    for it in range(1, iterations + 1):
        searcher.step(it)
        path.append(distance(problem.space, run.psi, target, scales))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    hit = next((i for i, d in enumerate(path) if d <= EPSILON), None)
    return {"seed": seed, "start": path[0], "final": path[-1], "iterations_to_eps": hit,
            "images_to_eps": None if hit is None else hit * settings.scenes_per_iteration, "seconds": seconds,
            "cpu_seconds": cpu,
            "at": {str(i): path[i] for i in (25, 50, 100, 150) if i < len(path)}}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    finals = sorted(r["final"] for r in runs)
    hits = [r["iterations_to_eps"] for r in runs]
    reached = sorted(h for h in hits if h is not None)
    # The median over seeds of iterations to epsilon, a seed that never got there counting as infinite.
    med_hits = sorted(h if h is not None else math.inf for h in hits)[len(hits) // 2]
    return {"final_median": statistics.median(finals), "final_min": finals[0], "final_max": finals[-1],
            "iterations_to_eps_median": None if math.isinf(med_hits) else med_hits,
            "reached": f"{len(reached)}/{len(runs)}",
            "seconds_per_run": statistics.mean(r["seconds"] for r in runs),
            "cpu_seconds_per_run": statistics.mean(r["cpu_seconds"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/convergence.json"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--problems", nargs="*", default=None)
    parser.add_argument("--grid", choices=["full", "small"], default="full")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started, cpu_started = time.perf_counter(), time.process_time()
    results: dict[str, Any] = {"grid": args.grid, "epsilon": EPSILON, "iterations": args.iterations,
                               "seeds": args.seeds,
                               "scenes_per_iteration": AutoSimulateSettings().scenes_per_iteration,
                               "machine": platform.platform(), "torch": torch.__version__, "problems": {}}
    for problem in problems():
        if args.problems and problem.name not in args.problems:
            continue
        target = problem.optimum()
        theta = problem.theta_hat(target)
        g_val = math.sqrt(sum(float((g**2).sum()) for g in problem.val_gradient(theta).values()))
        entry: dict[str, Any] = {
            "what": problem.what, "reachable": problem.reachable,
            "psi_star": {k: v.tolist() for k, v in problem.space.learnable(target).items()},
            "val_gradient_norm_at_optimum": g_val, "configs": []}
        for estimator, variance, step in grid(args.grid):
            runs = [one_run(problem, target, estimator, variance, step, seed, args.iterations)
                    for seed in range(args.seeds)]
            row = {"estimator": estimator, "variance": variance, "step": step, **summarise(runs), "runs": runs}
            entry["configs"].append(row)
            print(f"{problem.name:15s} {estimator:17s} {variance:13s} {step:19s} final {row['final_median']:.3f} "
                  f"({row['final_min']:.3f}..{row['final_max']:.3f}) to-eps {row['iterations_to_eps_median']} "
                  f"reached {row['reached']} {row['cpu_seconds_per_run']:.2f} cpu-s/run", flush=True)
        results["problems"][problem.name] = entry
        results["wall_seconds"] = time.perf_counter() - started
        results["cpu_seconds"] = time.process_time() - cpu_started
        # after every problem, so that an interrupted benchmark keeps what it measured
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out} ({results['wall_seconds']:.0f} s wall, {results['cpu_seconds']:.0f} s of one core)")


if __name__ == "__main__":
    main()
