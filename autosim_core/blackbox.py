"""Black-box searchers over the same parameter space: random search, Bayesian optimisation and
REINFORCE (Learning to Simulate, Ruiz et al.), the baselines of the paper's Tables 2 and 3.

One *objective evaluation* chooses a point of the search box, turns it into a sampling
distribution q_psi, renders ``scenes_per_evaluation`` images from it, trains a fresh model
(the run's seed, so every evaluation starts from the same weights) for ``epochs`` epochs and
scores it on the validation set; the reward is the validation metric. Each ``step`` of the run
is one evaluation, so ``images`` and the phase seconds count everything every evaluation cost.

Points come from a search box over the space (``searchbox.py``), suggested in batches by a
proposer (``proposers.py``); the searcher keeps every batch and its rewards, and a resumed run
replays them through a fresh proposer, which then proposes exactly what the uninterrupted run
would have.
"""

from __future__ import annotations

import importlib.util
import math
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .builtin_settings import BayesianSettings, BlackBoxSettings, RandomSettings, ReinforceSettings
from .evaluations import EvaluationJob, EvaluationPool, evaluate_job
from .proposers import (
    BayesianProposer,
    GaussianSoftmaxPolicy,
    Proposer,
    RandomProposer,
    ReinforceProposer,
    reinforce_gradient,
)
from .searchbox import Coordinate, Point, SearchBox
from .space import Psi

__all__ = ["BayesianProposer", "BayesianSearch", "Coordinate", "GaussianSoftmaxPolicy", "Point", "RandomProposer",
           "RandomSearch", "Reinforce", "ReinforceProposer", "SearchBox", "reinforce_gradient"]

if TYPE_CHECKING:
    from .contracts import SearchContext


class _BlackBox(ABC):
    """One objective evaluation per step; proposals in batches, replayed on resume."""

    settings_model: ClassVar[type[BlackBoxSettings]] = BlackBoxSettings
    uses_estimator = False
    requires_validation = True
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()
    """(module, distribution) pairs the searcher imports: ``autosim-core[baselines]``."""

    def __init__(self, run: SearchContext, settings: Any):
        self.run = run
        self.settings = settings
        self.box = SearchBox(run.space, spreads=settings.spreads, categoricals=settings.categoricals,
                             choice_weight=settings.choice_weight)
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
        run.book_seconds(wall, {phase: sum(r.seconds.get(phase, 0.0) for r in results) for phase in run.seconds})
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
        self.run.count_images(self.settings.scenes_per_evaluation)
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
            self.run.set_psi(psi)
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
