"""The black-box searchers: the search box, random search, Bayesian optimisation, REINFORCE,
and black-box runs on the toy (best evaluation's model and psi, resume with the same proposals)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from autosim_core import Bernoulli, Bounded, Categorical, LogNormal, Normal, ParameterSpace
from autosim_core.blackbox import (
    BayesianProposer,
    GaussianSoftmaxPolicy,
    RandomProposer,
    ReinforceProposer,
    SearchBox,
    reinforce_gradient,
)
from autosim_core.config import ConfigError, parse_config
from autosim_core.run import Run
from autosim_core.rundir import HISTORY
from autosim_core.searchbox import Categoricals

pytest.importorskip("sklearn")
pytest.importorskip("bayes_opt")


def mixed_space() -> ParameterSpace:
    return ParameterSpace(
        x=Normal(mean=0.5, std=0.3, low=-2.0, high=2.0),
        light=LogNormal(median=1.0, std=0.2, low=0.0, high=8.0),
        count=Bounded(low=0.0, high=10.0, mean=4.0, std=0.5, integer=True),
        kind=Categorical(choices=["a", "b", 3]),
        metal=Bernoulli(p=0.3),
        fixed=Normal(mean=0.0, std=1.0, learn=False),
    )


# -- the search box ---------------------------------------------------------------------------
def test_box_coordinates_and_bounds() -> None:
    box = SearchBox(mixed_space())
    c = box.by_name
    assert set(c) == {"x.mean", "x.log_std", "light.log_median", "light.log_std", "count.mean", "count.log_std",
                      "kind.weight.0", "kind.weight.1", "kind.weight.2", "metal.p"}
    assert (c["x.mean"].low, c["x.mean"].high) == (-2.0, 2.0)
    # start * 10 (3) is wider than the spread covering [-2, 2] (2): the wider one is the high end
    assert c["x.log_std"].low == pytest.approx(math.log(0.03)) and c["x.log_std"].high == pytest.approx(math.log(3))
    # a log-normal bounded at 0 below is searched over three decades under its high
    assert c["light.log_median"].high == pytest.approx(math.log(8.0))
    assert c["light.log_median"].low == pytest.approx(math.log(8.0 / 1000))
    assert c["count.mean"].kind == "int" and (c["count.mean"].low, c["count.mean"].high) == (1, 9)
    assert all(c[f"kind.weight.{i}"].kind == "float" and (c[f"kind.weight.{i}"].low, c[f"kind.weight.{i}"].high)
               == (0.0, 1.0) for i in range(3))
    assert not any(name.startswith("fixed") for name in c)
    assert set(SearchBox(mixed_space(), spreads=False).by_name) == {
        "x.mean", "light.log_median", "count.mean", "kind.weight.0", "kind.weight.1", "kind.weight.2", "metal.p"}
    choice = SearchBox(mixed_space(), categoricals="choice").by_name["kind.choice"]
    assert choice.kind == "choice" and choice.choices == ("a", "b", "3")


def test_unbounded_centre_is_searched_four_stds_each_way() -> None:
    box = SearchBox(ParameterSpace(z=Normal(mean=1.0, std=0.5)))
    assert (box.by_name["z.mean"].low, box.by_name["z.mean"].high) == (-1.0, 3.0)


@pytest.mark.parametrize(("family", "high"), [
    # half the range [-3, 5]: one std either side of the middle reaches both bounds
    (Normal(mean=0.0, std=0.05, low=-3.0, high=5.0), 4.0),
    (Normal(mean=0.0, std=0.05, low=-3.0, high=5.0, max_std=1.5), 1.5),  # max_std is below it
    (Normal(mean=2.0, std=0.05, low=-3.0, high=5.0, integer=True), 4.0),
    # half the log-range of [0.1, 10], in log units
    (LogNormal(median=1.0, std=0.01, low=0.1, high=10.0), math.log(10.0)),
    # the logit of a uniform value is logistic: std pi / sqrt(3)
    (Bounded(low=0.0, high=10.0, mean=4.0, std=0.05), math.pi / math.sqrt(3)),
    # open on a side: start * 10 as before
    (Normal(mean=0.0, std=0.05, low=-3.0), 0.5),
    (LogNormal(median=1.0, std=0.01, low=0.0, high=10.0), 0.1),
])
def test_spreads_reach_the_declared_range(family: Any, high: float) -> None:
    c = SearchBox(ParameterSpace(v=family)).by_name["v.log_std"]
    assert math.exp(c.high) == pytest.approx(high)
    assert math.exp(c.low) == pytest.approx(max(family.std / 10, family.min_std))
    wide = SearchBox(ParameterSpace(v=family)).space_at({"v.mean": 0.0, "v.log_median": 0.0, "v.log_std": 99.0})
    assert wide["v"].std == pytest.approx(high)


def test_equal_weights_are_the_uniform_mix() -> None:
    for n in (2, 3, 5):
        lopsided = [0.9] + [0.1 / (n - 1)] * (n - 1)
        box = SearchBox(ParameterSpace(kind=Categorical(choices=list(range(n)), probs=lopsided)))
        for weight in (0.0, 0.37, 1.0):
            at = box.space_at({f"kind.weight.{i}": weight for i in range(n)})
            assert at["kind"].probs == pytest.approx([1 / n] * n, rel=1e-12, abs=0)


def test_one_large_weight_is_nearly_one_hot_and_no_choice_is_ruled_out() -> None:
    box = SearchBox(ParameterSpace(kind=Categorical(choices=["a", "b", "c"])))
    probs = box.space_at({"kind.weight.0": 0.0, "kind.weight.1": 1.0, "kind.weight.2": 0.0})["kind"].probs
    # weights + 0.01, normalised: 1.01 / 1.03 and 0.01 / 1.03
    assert probs == pytest.approx([0.01 / 1.03, 1.01 / 1.03, 0.01 / 1.03])
    assert probs[1] > 0.98 and min(probs) > 0


@pytest.mark.parametrize("probs", [[0.7, 0.2, 0.1], [0.25, 0.25, 0.5], [0.05, 0.9, 0.05], [0.5, 0.5]])
def test_start_point_gives_back_the_declared_mix(probs: list[float]) -> None:
    space = ParameterSpace(kind=Categorical(choices=[str(i) for i in range(len(probs))], probs=probs))
    box = SearchBox(space)
    start = box.start_point()
    assert all(0.0 <= float(start[f"kind.weight.{i}"]) <= 1.0 for i in range(len(probs)))
    assert box.space_at(start)["kind"].probs == pytest.approx(probs, abs=1e-12)


def test_start_point_of_a_mix_beyond_the_floor_is_the_nearest_one_hot() -> None:
    box = SearchBox(ParameterSpace(kind=Categorical(choices=["a", "b", "c"], probs=[0.998, 0.001, 0.001])))
    start = box.start_point()
    assert [start[f"kind.weight.{i}"] for i in range(3)] == [1.0, 0.0, 0.0]
    assert box.space_at(start)["kind"].probs == pytest.approx([1.01 / 1.03, 0.01 / 1.03, 0.01 / 1.03])


def test_start_point_gives_back_the_start_distribution() -> None:
    space = mixed_space()
    box = SearchBox(space)
    start = box.start_point()
    assert start["x.mean"] == 0.5 and start["light.log_median"] == pytest.approx(0.0)
    assert start["count.mean"] == 4
    at = box.space_at(start)
    for name in ("x", "light", "count"):
        assert at[name].std == pytest.approx(space[name].std)
    assert at["x"].mean == 0.5 and at["light"].median == pytest.approx(1.0) and at["count"].mean == 4
    assert at["metal"].p == pytest.approx(0.3)
    assert at["kind"].probs == pytest.approx([1 / 3] * 3, abs=1e-12)
    assert at["fixed"] == space["fixed"]


def test_start_point_of_the_choice_form_favours_the_most_likely_choice() -> None:
    box = SearchBox(mixed_space(), categoricals="choice", choice_weight=0.6)
    start = box.start_point()
    assert start["kind.choice"] == "a"  # uniform: the first of the ties
    assert box.space_at(start)["kind"].probs == pytest.approx([0.6, 0.2, 0.2])


def test_space_at_clips_into_the_box_and_rejects_unknown_choices() -> None:
    box = SearchBox(mixed_space(), categoricals="choice")
    point = dict(box.start_point(), **{"x.mean": 7.0, "count.mean": 3.6, "kind.choice": "3"})
    at = box.space_at(point)
    assert at["x"].mean == 2.0 and at["count"].mean == 4
    assert at["kind"].probs == pytest.approx([0.075, 0.075, 0.85])
    with pytest.raises(ValueError, match="not one of"):
        box.space_at(dict(point, **{"kind.choice": "d"}))
    with pytest.raises(ValueError, match="lacks"):
        box.space_at({"x.mean": 0.0})
    mix = SearchBox(mixed_space())
    at = mix.space_at(dict(mix.start_point(), **{"kind.weight.0": 3.0, "kind.weight.1": -1.0}))
    assert at["kind"].probs == pytest.approx([1.01 / 1.53, 0.01 / 1.53, 0.51 / 1.53])


# -- random search ----------------------------------------------------------------------------------
@pytest.mark.parametrize("categoricals", ["mix", "choice"])
def test_random_points_stay_in_the_box_and_are_reproducible(categoricals: Categoricals) -> None:
    box = SearchBox(mixed_space(), categoricals=categoricals)
    a, b, other = (RandomProposer(box, seed, batch=50) for seed in (3, 3, 4))
    points = a.propose() + a.propose()
    assert points == b.propose() + b.propose()
    assert points != other.propose() + other.propose()
    assert points[:50] != points[50:]  # the second batch is a fresh draw
    for p in points:
        for c in box.coordinates:
            if c.kind == "choice":
                assert p[c.name] in c.choices
            else:
                assert c.low <= p[c.name] <= c.high
                if c.kind == "int":
                    assert isinstance(p[c.name], int)
        box.space_at(p)  # a valid space (the families check their settings)
    if categoricals == "choice":
        assert {p["kind.choice"] for p in points} == {"a", "b", "3"}
    else:
        mixes = [box.space_at(p)["kind"].probs for p in points]
        assert any(max(abs(q - 1 / 3) for q in m) < 0.1 for m in mixes)  # balanced mixes are proposed
        assert any(max(m) > 0.6 for m in mixes)  # and lopsided ones
    # uniform in log units: about half the medians lie below the box's mid-point in log
    mid = (box.by_name["light.log_median"].low + box.by_name["light.log_median"].high) / 2
    below = sum(p["light.log_median"] < mid for p in points)
    assert 30 <= below <= 70


# -- Bayesian optimisation ---------------------------------------------------------------------------
BONUS = {"a": 0.0, "b": 0.5, "c": 0.2}


def known_function(point: dict[str, Any]) -> float:
    """Maximum 0.5 at x = 0.7 with choice 'b'."""
    return -((float(point["x.mean"]) - 0.7) ** 2) + BONUS[str(point["kind.choice"])]


def test_bayesian_finds_the_maximum_with_a_categorical_coordinate() -> None:
    space = ParameterSpace(x=Normal(mean=0.0, std=1.0, low=-2.0, high=2.0), kind=Categorical(choices=["a", "b", "c"]))
    box = SearchBox(space, spreads=False, categoricals="choice")
    proposer = BayesianProposer(box, seed=0, init_points=5)
    evaluated: list[tuple[float, dict[str, Any]]] = []
    while len(evaluated) < 25:  # 5 random points + 20 guided ones
        batch = proposer.propose()
        rewards = [known_function(p) for p in batch]
        proposer.observe(batch, rewards)
        evaluated += list(zip(rewards, batch, strict=True))
    best_reward, best = max(evaluated, key=lambda e: e[0])
    assert best["kind.choice"] == "b"
    assert abs(float(best["x.mean"]) - 0.7) < 0.15
    assert best_reward > 0.5 - 0.02


@pytest.mark.parametrize("categoricals", ["mix", "choice"])
def test_bayesian_initial_points_come_as_one_batch(categoricals: Categoricals) -> None:
    box = SearchBox(mixed_space(), categoricals=categoricals)
    proposer = BayesianProposer(box, seed=1, init_points=4)
    batch = proposer.propose()
    assert len(batch) == 4
    proposer.observe(batch, [0.1, 0.2, 0.3, 0.4])
    guided = proposer.propose()
    assert len(guided) == 1
    for p in batch + guided:
        assert box.check(p) == p
        box.space_at(p)
        assert box.check(proposer._decode(proposer._encode(p))) == p


def test_bayesian_finds_a_mix() -> None:
    """Maximum 0 at the mix (0.2, 0.5, 0.3), which no favoured choice can give."""
    target = [0.2, 0.5, 0.3]
    box = SearchBox(ParameterSpace(kind=Categorical(choices=["a", "b", "c"])))
    proposer = BayesianProposer(box, seed=0, init_points=5)
    best = -math.inf
    for _ in range(20):
        batch = proposer.propose()
        rewards = [-sum((q - t) ** 2 for q, t in zip(box.space_at(p)["kind"].probs, target, strict=True))
                   for p in batch]
        proposer.observe(batch, rewards)
        best = max(best, *rewards)
    assert best > -0.005  # the best choice-form point, (0.075, 0.85, 0.075), scores -0.19


# -- REINFORCE -----------------------------------------------------------------------------------
def test_reinforce_gradient_is_unbiased_for_a_gaussian_policy() -> None:
    """E_pi[R] with R = -(u - a)^2 and u ~ N(mu, s^2) is -((mu - a)^2 + s^2): d/dmu = -2 (mu - a).
    For a softmax over choices with rewards r: d/dlogit_j = p_j (r_j - sum_i p_i r_i)."""
    space = ParameterSpace(x=Normal(mean=0.0, std=1.0, low=-1.0, high=1.0), kind=Categorical(choices=["a", "b", "c"]))
    box = SearchBox(space, spreads=False, categoricals="choice")
    policy = GaussianSoftmaxPolicy(box, sigma=0.2)
    a, r = 0.8, torch.tensor([0.0, 1.0, 0.3], dtype=torch.float64)
    n = 40000
    draws = policy.sample(n, torch.Generator().manual_seed(0))
    rewards = -((draws["continuous"][:, 0] - a) ** 2) + r[draws["choices"][:, 0]]
    g_mean, g_logits = reinforce_gradient(policy.log_prob(draws), rewards, 0.25, policy.parameters())

    mu = float(policy.mean.detach()[0])
    assert mu == pytest.approx(0.5)  # the start point's centre in the unit cube
    # per-draw terms, for the Monte-Carlo standard error of the mean
    terms = (rewards - 0.25) * (draws["continuous"][:, 0] - mu) / 0.2**2
    se = float(terms.std()) / math.sqrt(n)
    assert float(g_mean[0]) == pytest.approx(-2 * (mu - a), abs=4 * se)
    p = policy.logits[0].detach().softmax(-1)
    expected = p * (r - (p * r).sum())
    assert torch.allclose(g_logits, expected, atol=0.02)


def test_reinforce_policy_improves_on_a_known_reward() -> None:
    space = ParameterSpace(x=Normal(mean=0.0, std=1.0, low=-2.0, high=2.0), kind=Categorical(choices=["a", "b", "c"]))
    box = SearchBox(space, spreads=False, categoricals="choice")
    proposer = ReinforceProposer(box, seed=0, batch=8, sigma=0.15, lr=0.05)
    start_mean = proposer.policy.describe()["mean"]["x.mean"]
    start_b = proposer.policy.describe()["probs"]["kind.choice"]["b"]
    for _ in range(40):
        batch = proposer.propose()
        proposer.observe(batch, [known_function(p) for p in batch])
    described = proposer.policy.describe()
    assert abs(described["mean"]["x.mean"] - 0.7) < 0.5 * abs(start_mean - 0.7)
    assert described["probs"]["kind.choice"]["b"] > max(0.6, start_b + 0.25)
    assert proposer.steps == 40


def test_reinforce_policy_moves_a_mix_towards_the_rewarded_choice() -> None:
    box = SearchBox(ParameterSpace(kind=Categorical(choices=["a", "b", "c"])))
    proposer = ReinforceProposer(box, seed=0, batch=8, sigma=0.15, lr=0.05)
    assert proposer.policy.describe()["probs"]["kind"] == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert proposer.policy.categorical == []  # the weights are Gaussian coordinates
    for _ in range(40):
        batch = proposer.propose()
        for p in batch:
            box.space_at(p)
        proposer.observe(batch, [box.space_at(p)["kind"].probs[1] for p in batch])
    assert proposer.policy.describe()["probs"]["kind"]["b"] > 0.6


# -- runs on the toy -------------------------------------------------------------------------------
def blackbox_data(make_toy_data: Any, cache_dir: Path, searcher: str, evaluations: int,
                  **settings: Any) -> dict[str, Any]:
    data = make_toy_data(cache_dir, iterations=evaluations, test=True)
    data["searcher"] = {"name": searcher, "settings": {"scenes_per_evaluation": 48, **settings}}
    data.pop("estimator")
    return data


def rows_of(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / HISTORY).read_text().splitlines() if line.strip()]


NARROW_MIXED_TOY = {"label": {"family": "categorical", "choices": [0, 1], "learn": True}, "x1": {"std": 0.05}}
"""The toy with its class label a learnable categorical and class 1's x starting narrow: 0.05,
whose ten times (0.5) is far below the spread covering x1's bounds [-5, 5] (5)."""


def test_random_search_reaches_balanced_mixes_and_broad_spreads(tmp_path: Path, cache_dir: Path,
                                                                 make_toy_data: Any) -> None:
    data = blackbox_data(make_toy_data, cache_dir, "random", 12, batch=12, scenes_per_evaluation=16, epochs=1)
    data["simulator"]["overrides"] = NARROW_MIXED_TOY
    Run(parse_config(data), tmp_path / "run").execute()
    psis = [r["psi"] for r in rows_of(tmp_path / "run")]
    assert len(psis) == 12
    assert any(abs(p["label"]["probs"]["0"] - 0.5) < 0.1 for p in psis)
    assert any(p["x1"]["std"] > 0.05 * 10 for p in psis)
    assert all(p["x1"]["std"] <= 5.0 + 1e-9 for p in psis)


@pytest.mark.parametrize(("searcher", "settings"), [("random", {"batch": 2}), ("bayesian", {"init_points": 2}),
                                                    ("reinforce", {"batch": 2})])
def test_blackbox_run_keeps_the_best_evaluation(tmp_path: Path, cache_dir: Path, make_toy_data: Any,
                                                searcher: str, settings: dict[str, Any]) -> None:
    data = blackbox_data(make_toy_data, cache_dir, searcher, 5, **settings)
    summary = Run(parse_config(data), tmp_path / "run").execute()
    rows = rows_of(tmp_path / "run")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["images"] for r in rows] == [48 * i for i in range(1, 6)]
    assert all(0 <= r["val_metric"] <= 1 and set(r["point"]) >= {"x1.mean", "y1.log_std"} for r in rows)
    best = max(rows, key=lambda r: r["val_metric"])
    assert summary["best"]["val_metric"] == best["val_metric"]
    assert summary["best"]["iteration"] == best["iteration"]
    # the run's model and psi are the best evaluation's: scoring that model again gives its metric
    assert summary["val"]["metric"] == pytest.approx(best["val_metric"])
    psi = json.loads((tmp_path / "run" / "psi.json").read_text())["psi"]
    assert psi["x1"]["mean"] == pytest.approx(best["psi"]["x1"]["mean"])
    assert psi["y1"]["std"] == pytest.approx(best["psi"]["y1"]["std"])
    assert "test" in summary
    # every evaluation trains a fresh model: the points differ, the first evaluation is not reused
    assert len({json.dumps(r["point"], sort_keys=True) for r in rows}) == 5


@pytest.mark.parametrize(("searcher", "settings"), [("bayesian", {"init_points": 2}), ("reinforce", {"batch": 2}),
                                                    ("random", {"batch": 2})])
def test_blackbox_resume_makes_the_same_proposals(tmp_path: Path, cache_dir: Path, make_toy_data: Any,
                                                  searcher: str, settings: dict[str, Any]) -> None:
    """Stopped after 3 evaluations (in the middle of a batch of 2), then resumed to 6: the same
    points, rewards and final psi as one uninterrupted run of 6 (on a space with a mix)."""

    def config(evaluations: int) -> Any:
        data = blackbox_data(make_toy_data, cache_dir, searcher, evaluations, **settings)
        data["simulator"]["overrides"] = NARROW_MIXED_TOY
        return parse_config(data)

    whole = Run(config(6), tmp_path / "whole").execute()
    Run(config(3), tmp_path / "part").execute()
    resumed = Run(config(6), tmp_path / "part").execute(resume=True)
    a, b = rows_of(tmp_path / "whole"), rows_of(tmp_path / "part")
    assert {"label.weight.0", "label.weight.1"} <= set(a[0]["point"])
    assert [r["point"] for r in a] == [r["point"] for r in b]
    assert [r["val_metric"] for r in a] == [r["val_metric"] for r in b]
    assert whole["psi"] == resumed["psi"]
    assert whole["best"]["iteration"] == resumed["best"]["iteration"]


def test_blackbox_searchers_need_a_validation_set(cache_dir: Path, make_toy_data: Any, tmp_path: Path) -> None:
    data = blackbox_data(make_toy_data, cache_dir, "random", 2)
    data.pop("validation")
    with pytest.raises(ConfigError, match="validation: required by the 'random' searcher"):
        Run(parse_config(data), tmp_path / "run")


def test_missing_baseline_packages_are_named(cache_dir: Path, make_toy_data: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bayes_opt" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs bayesian-optimization \(pip install 'autosim-core\[baselines\]'\)"):
        Run(parse_config(blackbox_data(make_toy_data, cache_dir, "bayesian", 2)), tmp_path / "run")


def test_blackbox_settings_are_checked(cache_dir: Path, make_toy_data: Any, tmp_path: Path) -> None:
    data = blackbox_data(make_toy_data, cache_dir, "reinforce", 2, batch=1, sigma=-1)
    with pytest.raises(ConfigError) as err:
        Run(parse_config(data), tmp_path / "run")
    assert any(line.startswith("searcher.settings.batch") for line in err.value.lines)
    assert any(line.startswith("searcher.settings.sigma") for line in err.value.lines)
