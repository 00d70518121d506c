"""Black-box searchers over the same parameter space: random search, Bayesian optimisation and
REINFORCE (Learning to Simulate, Ruiz et al.), the baselines of the paper's Tables 2 and 3.

One *objective evaluation* chooses a point of the search box, turns it into a sampling
distribution q_psi, renders ``scenes_per_evaluation`` images from it, trains a fresh model
(the run's seed, so every evaluation starts from the same weights) for ``epochs`` epochs and
scores it on the validation set; the reward is the validation metric. Each ``step`` of the run
is one evaluation, so ``images`` and the phase seconds count everything every evaluation cost.

The search box has, per learnable parameter of the space, its centre (the mean of a normal or
bounded family, the log-median of a log-normal, ``p`` of a Bernoulli), its spread (the log of
the std of the Gaussian families' latent, when ``spreads`` is on) and, for a categorical, which
choice is favoured (it gets ``choice_weight``, the others share the rest, so no value is ever
ruled out). Proposers suggest points in batches; the searcher keeps every batch and its
rewards, and a resumed run replays them through a fresh proposer, which then proposes exactly
what the uninterrupted run would have.
"""

from __future__ import annotations

import importlib.util
import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import torch

from .builtin_settings import BayesianSettings, BlackBoxSettings, RandomSettings, ReinforceSettings
from .evaluations import EvaluationJob, EvaluationPool
from .space import Bernoulli, Bounded, Categorical, LogNormal, Normal, ParameterSpace, Psi

if TYPE_CHECKING:
    from .run import Run

Point = dict[str, float | int | str]
"""A point of the search box: coordinate name -> value (a choice's label for categoricals)."""

SPREAD_RANGE = 10.0
"""A spread is searched within [start / 10, start * 10] (and the family's min_std/max_std)."""
UNBOUNDED_WIDTH = 4.0
"""A centre with no declared bound on one side is searched up to 4 start stds that way."""
LOG_DECADES = math.log(1000.0)
"""A log-normal bounded only above (or at 0) is searched over three decades below its high."""


@dataclass(frozen=True)
class Coordinate:
    """One dimension of the search box, in the units searched (log units where ``log`` is in
    the name): ``float`` and ``int`` coordinates lie in [low, high]; ``choice`` ones in
    ``choices``."""

    name: str
    parameter: str
    kind: Literal["float", "int", "choice"]
    low: float = 0.0
    high: float = 1.0
    choices: tuple[str, ...] = ()

    def clip(self, value: float) -> float | int:
        value = min(max(value, self.low), self.high)
        return round(value) if self.kind == "int" else value


class SearchBox:
    """The black-box searchers' view of a parameter space (see the module's docstring)."""

    def __init__(self, space: ParameterSpace, *, spreads: bool = True, choice_weight: float = 0.85):
        self.space = space
        self.spreads = spreads
        self.choice_weight = choice_weight
        self.coordinates: list[Coordinate] = []
        for name, fam in space.parameters.items():
            if fam.learn:
                self.coordinates.extend(self._coordinates(name, fam))
        if not self.coordinates:
            raise ValueError("the simulator's parameter space has no learnable parameter")
        self.by_name = {c.name: c for c in self.coordinates}

    def _coordinates(self, name: str, fam: Any) -> list[Coordinate]:
        if isinstance(fam, Categorical):
            return [Coordinate(f"{name}.choice", name, "choice", choices=tuple(str(c) for c in fam.choices))]
        if isinstance(fam, Bernoulli):
            return [Coordinate(f"{name}.p", name, "float", 0.01, 0.99)]
        start = fam.psi_init()
        loc, std = float(start["loc"]), fam.std
        if isinstance(fam, LogNormal):
            high = math.log(fam.high) if fam.high is not None else loc + UNBOUNDED_WIDTH * std
            if fam.low:
                low = math.log(fam.low)
            else:
                low = high - LOG_DECADES if fam.high is not None else loc - UNBOUNDED_WIDTH * std
            centre = Coordinate(f"{name}.log_median", name, "float", min(low, loc), max(high, loc))
        else:
            if isinstance(fam, Bounded):
                margin = 0.005 * (fam.high - fam.low)
                low, high = fam.low + margin, fam.high - margin
            else:
                assert isinstance(fam, Normal)
                low = fam.low if fam.low is not None else fam.mean - UNBOUNDED_WIDTH * std
                high = fam.high if fam.high is not None else fam.mean + UNBOUNDED_WIDTH * std
            kind: Literal["float", "int"] = "int" if fam.integer else "float"
            if kind == "int":
                low, high = math.ceil(low), math.floor(high)
            centre = Coordinate(f"{name}.mean", name, kind, low, high)
        if not self.spreads:
            return [centre]
        lo = max(math.log(std / SPREAD_RANGE), math.log(fam.min_std))
        hi = math.log(std * SPREAD_RANGE)
        if fam.max_std is not None:
            hi = min(hi, math.log(fam.max_std))
        return [centre, Coordinate(f"{name}.log_std", name, "float", lo, hi)]

    # -- points <-> distributions -----------------------------------------------------------
    def start_point(self) -> Point:
        """The point closest to the space as declared (where REINFORCE's policy starts)."""
        point: Point = {}
        for c in self.coordinates:
            fam = self.space[c.parameter]
            if c.kind == "choice":
                probs = fam.psi_init()["logits"].softmax(-1)
                point[c.name] = c.choices[int(probs.argmax())]
            elif c.name.endswith(".log_std"):
                point[c.name] = c.clip(math.log(fam.std))
            elif isinstance(fam, Bernoulli):
                point[c.name] = c.clip(fam.p)
            elif isinstance(fam, LogNormal):
                point[c.name] = c.clip(math.log(fam.median))
            else:
                point[c.name] = c.clip(fam.mean)
        return point

    def check(self, point: Mapping[str, Any]) -> Point:
        """The point with every coordinate present and inside the box (choices by label)."""
        missing = [c.name for c in self.coordinates if c.name not in point]
        if missing:
            raise ValueError(f"point lacks coordinates: {', '.join(missing)}")
        out: Point = {}
        for c in self.coordinates:
            value = point[c.name]
            if c.kind == "choice":
                if str(value) not in c.choices:
                    raise ValueError(f"{c.name}: {value!r} is not one of {', '.join(c.choices)}")
                out[c.name] = str(value)
            else:
                out[c.name] = c.clip(float(value))
        return out

    def space_at(self, point: Mapping[str, Any]) -> ParameterSpace:
        """The sampling distribution a point stands for."""
        point = self.check(point)
        changes: dict[str, dict[str, Any]] = {}
        for c in self.coordinates:
            fam = self.space[c.parameter]
            change = changes.setdefault(c.parameter, {})
            value = point[c.name]
            if c.kind == "choice":
                n = len(c.choices)
                rest = (1.0 - self.choice_weight) / (n - 1)
                change["probs"] = [self.choice_weight if label == value else rest for label in c.choices]
            elif c.name.endswith(".log_std"):
                std = math.exp(float(value))
                change["std"] = min(max(std, fam.min_std), fam.max_std or math.inf)
            elif isinstance(fam, Bernoulli):
                change["p"] = float(value)
            elif isinstance(fam, LogNormal):
                change["median"] = math.exp(float(value))
            else:
                change["mean"] = value
        return self.space.override(changes)

    # -- the unit cube, for policies ----------------------------------------------------------
    def to_unit(self, c: Coordinate, value: float) -> float:
        return 0.5 if c.high == c.low else (float(value) - c.low) / (c.high - c.low)

    def from_unit(self, c: Coordinate, u: float) -> float | int:
        return c.clip(c.low + (c.high - c.low) * float(u))


# -- proposers ---------------------------------------------------------------------------------
class Proposer(Protocol):
    """Suggests batches of points and learns from their rewards (higher is better).

    A proposer is deterministic given its seed and the rewards it observed: a resumed run
    replays ``propose``/``observe`` to rebuild it.
    """

    def propose(self) -> list[Point]: ...

    def observe(self, points: list[Point], rewards: list[float]) -> None: ...


class RandomProposer:
    """Independent uniform draws from the box by scikit-learn's ``ParameterSampler`` (log units
    are searched uniformly, i.e. log-uniformly in the value); batch b is seeded by (seed, b)."""

    def __init__(self, box: SearchBox, seed: int, batch: int = 4):
        from scipy import stats

        self.box = box
        self.seed = seed
        self.batch = batch
        self.batches = 0
        self.distributions: dict[str, Any] = {}
        for c in box.coordinates:
            if c.kind == "choice":
                self.distributions[c.name] = list(c.choices)
            elif c.kind == "int":
                self.distributions[c.name] = stats.randint(int(c.low), int(c.high) + 1)
            else:
                self.distributions[c.name] = stats.uniform(loc=c.low, scale=c.high - c.low)

    def propose(self) -> list[Point]:
        from sklearn.model_selection import ParameterSampler

        state = (self.seed * 1_000_003 + self.batches) % 2**32
        self.batches += 1
        sampler = ParameterSampler(self.distributions, n_iter=self.batch, random_state=state)
        return [self.box.check(p) for p in sampler]

    def observe(self, points: list[Point], rewards: list[float]) -> None:
        pass


def _bayes_opt_has_typed_parameters() -> bool:
    from importlib.metadata import version

    return int(version("bayesian-optimization").split(".")[0]) >= 3


class BayesianProposer:
    """The ``bayesian-optimization`` package (a GP with an acquisition function): first
    ``init_points`` random points in one batch, then one suggestion at a time.

    Integer and categorical coordinates use the package's typed parameters (version 3 and
    later); older versions get an encoding: an integer is a float rounded to the nearest
    integer, a categorical is a float in [0, n) whose integer part indexes the choices.
    """

    def __init__(self, box: SearchBox, seed: int, *, init_points: int = 5,
                 acquisition: Literal["ucb", "ei", "poi"] = "ucb", kappa: float = 2.576, xi: float = 0.01):
        from bayes_opt import BayesianOptimization
        from bayes_opt import acquisition as acq

        self.box = box
        self.init_points = init_points
        self.typed = _bayes_opt_has_typed_parameters()
        bounds: dict[str, Any] = {}
        for c in box.coordinates:
            if c.kind == "choice":
                bounds[c.name] = list(c.choices) if self.typed else (0.0, len(c.choices) - 1e-9)
            elif c.kind == "int" and self.typed:
                bounds[c.name] = (int(c.low), int(c.high), int)
            else:
                bounds[c.name] = (c.low, c.high)
        # The optimiser hands its own random state to the acquisition function at each suggest().
        function: Any
        if acquisition == "ucb":
            function = acq.UpperConfidenceBound(kappa=kappa)
        elif acquisition == "ei":
            function = acq.ExpectedImprovement(xi=xi)
        else:
            function = acq.ProbabilityOfImprovement(xi=xi)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Non-float parameters are experimental")
            self.optimizer = BayesianOptimization(f=None, pbounds=bounds, acquisition_function=function,
                                                  random_state=seed, verbose=0, allow_duplicate_points=True)
        self.proposed = 0

    def _decode(self, params: Mapping[str, Any]) -> Point:
        point: dict[str, Any] = {}
        for c in self.box.coordinates:
            value = params[c.name]
            if c.kind == "choice" and not self.typed:
                value = c.choices[min(int(float(value)), len(c.choices) - 1)]
            elif c.kind != "choice":
                value = float(value)
            point[c.name] = value
        return self.box.check(point)

    def _encode(self, point: Point) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for c in self.box.coordinates:
            value = point[c.name]
            if c.kind == "choice" and not self.typed:
                value = c.choices.index(str(value)) + 0.5
            elif c.kind == "int" and self.typed:
                value = int(value)
            params[c.name] = value
        return params

    def propose(self) -> list[Point]:
        if self.proposed < self.init_points:
            raw = self.optimizer.random_sample(self.init_points - self.proposed)
        else:
            raw = [self.optimizer.suggest()]
        self.proposed += len(raw)
        return [self._decode(p) for p in raw]

    def observe(self, points: list[Point], rewards: list[float]) -> None:
        for point, reward in zip(points, rewards, strict=True):
            self.optimizer.register(params=self._encode(point), target=float(reward))


class GaussianSoftmaxPolicy:
    """Learning to Simulate's policy: independent Gaussians on the float and integer
    coordinates (in the unit cube of the box, fixed ``sigma``) and a softmax per categorical.

    ``mean`` starts at the box's start point; a categorical's logits start at the log of the
    space's own probabilities. Samples are clipped into the box (and rounded for integers) to
    be evaluated; the log-density is that of the unclipped draw.
    """

    def __init__(self, box: SearchBox, sigma: float):
        self.box = box
        self.sigma = sigma
        start = box.start_point()
        self.continuous = [c for c in box.coordinates if c.kind != "choice"]
        self.categorical = [c for c in box.coordinates if c.kind == "choice"]
        self.mean = torch.tensor([box.to_unit(c, float(start[c.name])) for c in self.continuous],
                                 dtype=torch.float64, requires_grad=True)
        self.logits = [torch.log(box.space[c.parameter].psi_init()["logits"].softmax(-1).double())
                       .detach().requires_grad_(True) for c in self.categorical]

    def parameters(self) -> list[torch.Tensor]:
        return [self.mean, *self.logits]

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            u = self.mean + self.sigma * torch.randn((n, len(self.continuous)), generator=generator,
                                                     dtype=torch.float64)
            picks = [torch.multinomial(lg.softmax(-1), n, replacement=True, generator=generator)
                     for lg in self.logits]
        choices = torch.stack(picks, dim=1) if picks else torch.zeros((n, 0), dtype=torch.long)
        return {"continuous": u, "choices": choices}

    def log_prob(self, draws: Mapping[str, torch.Tensor]) -> torch.Tensor:
        normal = torch.distributions.Normal(self.mean, self.sigma)
        total = normal.log_prob(draws["continuous"]).sum(-1)
        for j, lg in enumerate(self.logits):
            total = total + torch.log_softmax(lg, -1)[draws["choices"][:, j]]
        return total

    def points(self, draws: Mapping[str, torch.Tensor]) -> list[Point]:
        out = []
        for i in range(draws["continuous"].shape[0]):
            point: Point = {c.name: self.box.from_unit(c, float(draws["continuous"][i, j]))
                            for j, c in enumerate(self.continuous)}
            point.update({c.name: c.choices[int(draws["choices"][i, j])] for j, c in enumerate(self.categorical)})
            out.append(point)
        return out

    def describe(self) -> dict[str, Any]:
        mean = {c.name: self.box.from_unit(c, float(self.mean.detach()[j])) for j, c in enumerate(self.continuous)}
        probs = {c.name: dict(zip(c.choices, lg.detach().softmax(-1).tolist(), strict=True))
                 for c, lg in zip(self.categorical, self.logits, strict=True)}
        return {"mean": mean, "probs": probs}


def reinforce_gradient(log_prob: torch.Tensor, rewards: torch.Tensor, baseline: float,
                       parameters: list[torch.Tensor]) -> list[torch.Tensor]:
    """(1/n) sum_i (R_i - b) grad log pi(x_i): an unbiased estimate of grad E_pi[R] for any b
    that does not depend on the draws."""
    surrogate = ((rewards.detach() - baseline) * log_prob).mean()
    return [g.detach() for g in torch.autograd.grad(surrogate, parameters)]


class ReinforceProposer:
    """REINFORCE with a moving-average baseline: each policy step samples ``batch`` points,
    waits for their rewards, and ascends sum (R - b) grad log pi with Adam."""

    def __init__(self, box: SearchBox, seed: int, *, batch: int = 4, sigma: float = 0.15, lr: float = 0.05,
                 baseline_decay: float = 0.8):
        self.policy = GaussianSoftmaxPolicy(box, sigma)
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.batch = batch
        self.baseline_decay = baseline_decay
        self.baseline: float | None = None
        self.steps = 0
        self._draws: list[tuple[Point, dict[str, torch.Tensor]]] = []

    def propose(self) -> list[Point]:
        draws = self.policy.sample(self.batch, self.generator)
        points = self.policy.points(draws)
        self._draws = [(p, {k: v[i:i + 1] for k, v in draws.items()}) for i, p in enumerate(points)]
        return points

    def observe(self, points: list[Point], rewards: list[float]) -> None:
        if len(points) != len(self._draws):
            raise ValueError("REINFORCE observes the whole batch it proposed")
        draws = {k: torch.cat([d[k] for _, d in self._draws]) for k in self._draws[0][1]}
        r = torch.tensor(rewards, dtype=torch.float64)
        if self.baseline is None:
            self.baseline = float(r.mean())
        grads = reinforce_gradient(self.policy.log_prob(draws), r, self.baseline, self.policy.parameters())
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.policy.parameters(), grads, strict=True):
            p.grad = -g  # the optimiser descends; the policy ascends the reward
        self.optimizer.step()
        with torch.no_grad():
            self.policy.mean.clamp_(0.0, 1.0)
        self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * float(r.mean())
        self.steps += 1
        self._draws = []


# -- the searchers -------------------------------------------------------------------------------
def evaluate_job(run: Run, box: SearchBox, job: EvaluationJob) -> tuple[dict[str, Any], torch.nn.Module, Psi]:
    """One objective evaluation: render ``job``'s scenes, train a fresh model on them in the
    job's orders, score it on the validation set. Returns its history row, the model and psi."""
    space = box.space_at(job.point)
    psi = space.init_psi()
    batch = run.render_training_records(job.records)
    model = run.create_model()
    optimizer = run.create_model_optimizer(model)
    train_loss = run.fine_tune(model, optimizer, batch, orders=job.orders)
    row = {"train_loss": train_loss, **run.validation_row(model), "psi": space.describe(psi), "point": job.point}
    return row, model, psi


class _BlackBox(ABC):
    """One objective evaluation per step; proposals in batches, replayed on resume."""

    settings_model: ClassVar[type[BlackBoxSettings]] = BlackBoxSettings
    uses_estimator = False
    requires_validation = True
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()
    """(module, distribution) pairs the searcher imports: ``autosim-core[baselines]``."""

    def __init__(self, run: Run, settings: Any):
        self.run = run
        self.settings = settings
        self.box = SearchBox(run.space, spreads=settings.spreads, choice_weight=settings.choice_weight)
        self.proposer = self.make_proposer(run.config.seed)
        self.batches: list[list[Point]] = []
        self.rewards: list[list[float]] = []
        self.best = -math.inf
        self.ready: list[tuple[dict[str, Any], dict[str, torch.Tensor], Psi, torch.Tensor]] = []
        """Evaluations of the current batch done in parallel, not yet reported by a step: row,
        model state, psi, and the run's generator state just after the evaluation's draws."""
        self._generator_after: torch.Tensor | None = None
        self._evaluation_pool: EvaluationPool | None = None

    @abstractmethod
    def make_proposer(self, seed: int) -> Proposer: ...

    @classmethod
    def missing_requirements(cls) -> list[str]:
        return [dist for module, dist in cls.requires if importlib.util.find_spec(module) is None]

    def _next_point(self) -> Point:
        if not self.batches or len(self.rewards[-1]) == len(self.batches[-1]):
            batch = [self.box.check(p) for p in self.proposer.propose()]
            if not batch:
                raise RuntimeError(f"{type(self).__name__}: the proposer returned no point")
            self.batches.append(batch)
            self.rewards.append([])
        return self.batches[-1][len(self.rewards[-1])]

    def draw(self, point: Point, first_id: int) -> EvaluationJob:
        """Every random draw of one evaluation of ``point``: its scenes (ids from ``first_id``),
        their render seeds and the training epochs' orders, from the run's generator."""
        run = self.run
        space = self.box.space_at(point)
        count = self.settings.scenes_per_evaluation
        ids = list(range(first_id, first_id + count))
        scenes = run.sample_scenes(space, space.init_psi(), count, run.generator, ids)
        return EvaluationJob(point, scenes.records, run.epoch_orders(count, self.settings.epochs))

    def evaluate(self, point: Point) -> tuple[dict[str, Any], torch.nn.Module, Psi]:
        """Render from the point's distribution, train a fresh model, score it on validation."""
        return evaluate_job(self.run, self.box, self.draw(point, self.run.images))

    def _pool(self) -> EvaluationPool | None:
        """Where the evaluations of a batch run at once (None: one after another, here)."""
        executor = self.run.config.executor
        if executor.kind == "inline":
            return None
        if self._evaluation_pool is None:
            workers = self.run.executor.workers
            if workers < 2:
                return None
            # The run renders nothing itself while its evaluations run in workers: its render
            # workers give their CPUs (Ray) and memory back; a later render starts them again.
            self.run.close()
            self._evaluation_pool = EvaluationPool(self.run, executor.kind, workers)
        return self._evaluation_pool

    def _evaluations_left(self, count: int) -> int:
        """How many of the batch's evaluations the budget still allows (a time budget: all)."""
        run = self.run
        budget = run.config.budget
        left = len(self.batches[-1]) - len(self.rewards[-1])
        if budget.images is not None:
            left = min(left, -(-(budget.images - run.images) // count))
        if budget.iterations is not None:
            left = min(left, budget.iterations - run.iteration + 1)
        return max(left, 1)

    def _evaluate_batch(self, pool: EvaluationPool) -> None:
        """Evaluates the rest of the current batch on the pool; the results wait in ``ready``."""
        run = self.run
        count = self.settings.scenes_per_evaluation
        done = len(self.rewards[-1])
        points = self.batches[-1][done:done + self._evaluations_left(count)]
        jobs, after = [], []
        for i, point in enumerate(points):
            jobs.append(self.draw(point, run.images + i * count))
            after.append(run.generator.get_state())
        start = time.perf_counter()
        results = pool.evaluate(jobs)
        # The batch's wall time, split between the phases as the workers spent theirs: the
        # phases still add up to the run's seconds.
        wall = time.perf_counter() - start
        spent = {phase: sum(r.seconds.get(phase, 0.0) for r in results) for phase in run.seconds}
        total = sum(spent.values())
        for phase, seconds in spent.items():
            run.seconds[phase] += wall * seconds / total if total > 0 else 0.0
        if total <= 0:
            run.seconds["train"] += wall
        self.ready = [(r.row, r.model_state, r.psi, state) for r, state in zip(results, after, strict=True)]

    def _next_result(self, point: Point) -> tuple[dict[str, Any], dict[str, torch.Tensor] | torch.nn.Module, Psi]:
        # Results already evaluated come first, whatever the executor is now (a resumed run may
        # have changed it): the draws that made them are behind the run's generator.
        if not self.ready:
            pool = self._pool()
            if pool is None:
                return self.evaluate(point)
            self._evaluate_batch(pool)
        row, state, psi, self._generator_after = self.ready.pop(0)
        if row.get("point") != point:  # cannot happen: results are kept in the batch's order
            raise RuntimeError(f"{type(self).__name__}: a parallel result is for {row.get('point')}, not {point}")
        self.run.images += self.settings.scenes_per_evaluation
        return dict(row), state, psi

    def drop_results_ahead(self) -> None:
        """After a skipped step (NaN): the results evaluated ahead were drawn after the skipped
        one's draws, where the one-at-a-time run's retry draws; they are dropped and the random
        stream goes back to just after the skipped evaluation's draws, as that run's would be."""
        if self._generator_after is not None:
            self.run.generator.set_state(self._generator_after)
        self.ready = []
        self._generator_after = None

    def step(self, iteration: int) -> dict[str, Any]:
        point = self._next_point()
        row, model, psi = self._next_result(point)
        reward = row["val_metric"]
        self.rewards[-1].append(float(reward))
        if reward > self.best:
            # The run's model and psi are the best evaluation's: its checkpoint, summary
            # (validation and test metrics), psi.json and `autosim generate` all use them.
            self.best = float(reward)
            assert self.run.model is not None
            self.run.model.load_state_dict(model if isinstance(model, dict) else model.state_dict())
            with torch.no_grad():
                for k, v in psi.items():
                    self.run.psi[k].copy_(v)
        if len(self.rewards[-1]) == len(self.batches[-1]):
            self.proposer.observe(self.batches[-1], self.rewards[-1])
        row["batch"] = len(self.batches)
        return row

    def close(self) -> None:
        if self._evaluation_pool is not None:
            self._evaluation_pool.shutdown()
            self._evaluation_pool = None

    def state_dict(self) -> dict[str, Any]:
        # Results evaluated in parallel but not yet reported: the random draws that made them
        # are behind the checkpoint's generator, so a resumed run must not evaluate them again.
        return {"batches": self.batches, "rewards": self.rewards, "best": self.best,
                "ready": [{"row": row, "model": state, "psi": psi, "generator_after": after}
                          for row, state, psi, after in self.ready]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.proposer = self.make_proposer(self.run.config.seed)
        self.batches, self.rewards = [], []
        for stored, rewards in zip(state["batches"], state["rewards"], strict=True):
            batch = [self.box.check(p) for p in self.proposer.propose()]
            if [self.box.check(p) for p in stored] != batch:
                raise RuntimeError(f"{type(self).__name__}: replaying the stored evaluations proposed other "
                                   "points (the searcher's settings or its library's version changed)")
            self.batches.append(batch)
            self.rewards.append(list(rewards))
            if len(rewards) == len(batch):
                self.proposer.observe(batch, list(rewards))
        self.best = float(state["best"])
        self.ready = [(r["row"], r["model"], r["psi"], r["generator_after"]) for r in state.get("ready", [])]


class RandomSearch(_BlackBox):
    """Random search: independent uniform points of the box (scikit-learn's ParameterSampler)."""

    settings_model = RandomSettings
    requires = (("sklearn", "scikit-learn"), ("scipy", "scipy"))

    def make_proposer(self, seed: int) -> Proposer:
        return RandomProposer(self.box, seed, batch=self.settings.batch)


class BayesianSearch(_BlackBox):
    """Bayesian optimisation of the validation metric over the box (bayesian-optimization)."""

    settings_model = BayesianSettings
    requires = (("bayes_opt", "bayesian-optimization"),)

    def make_proposer(self, seed: int) -> Proposer:
        s = self.settings
        return BayesianProposer(self.box, seed, init_points=s.init_points, acquisition=s.acquisition,
                                kappa=s.kappa, xi=s.xi)


class Reinforce(_BlackBox):
    """Learning to Simulate: REINFORCE on a Gaussian/softmax policy over the box."""

    settings_model = ReinforceSettings

    def make_proposer(self, seed: int) -> Proposer:
        s = self.settings
        return ReinforceProposer(self.box, seed, batch=s.batch, sigma=s.sigma, lr=s.lr,
                                 baseline_decay=s.baseline_decay)

    def step(self, iteration: int) -> dict[str, Any]:
        row = super().step(iteration)
        proposer = self.proposer
        assert isinstance(proposer, ReinforceProposer)
        row["policy"] = {"steps": proposer.steps, **proposer.policy.describe()}
        return row
