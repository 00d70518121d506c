"""Proposers of the black-box searchers: random search (scikit-learn), Bayesian optimisation
(bayesian-optimization) and REINFORCE on a Gaussian/softmax policy (Learning to Simulate).

Each suggests points of a :class:`~autosim_core.searchbox.SearchBox` in batches and learns from
their rewards; given its seed and the rewards it observed it is deterministic, so a resumed run
rebuilds it by replaying them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal, Protocol

import torch

from .searchbox import Point, SearchBox
from .space import Categorical


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

    Integer and choice coordinates (``categoricals = "choice"``) use the package's typed
    parameters (version 3 and later); older versions get an encoding: an integer is a float
    rounded to the nearest integer, a choice is a float in [0, n) whose integer part indexes
    the choices. A mix's weights are plain floats.
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
    coordinates (in the unit cube of the box, fixed ``sigma``) and a softmax per choice
    coordinate (``categoricals = "choice"``; a mix's weights are float coordinates).

    ``mean`` starts at the box's start point; a choice coordinate's logits start at the log of
    the space's own probabilities. Samples are clipped into the box (and rounded for integers)
    to be evaluated; the log-density is that of the unclipped draw.
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
        """The policy's mean point and, per categorical, its choices' probabilities: the
        softmax of a choice coordinate (by its name), or the mix at the mean (by parameter)."""
        mean = {c.name: self.box.from_unit(c, float(self.mean.detach()[j])) for j, c in enumerate(self.continuous)}
        probs = {c.name: dict(zip(c.choices, lg.detach().softmax(-1).tolist(), strict=True))
                 for c, lg in zip(self.categorical, self.logits, strict=True)}
        for parameter in dict.fromkeys(c.parameter for c in self.continuous if c.role == "weight"):
            fam = self.box.space[parameter]
            assert isinstance(fam, Categorical)
            labels = [str(label) for label in fam.choices]
            probs[parameter] = dict(zip(labels, self.box.probs(mean, parameter), strict=True))
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
