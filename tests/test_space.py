"""ParameterSpace: overrides and presets, with_psi, projection, records, names, serialisation, box."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError

from autosim_core.space import (
    Bernoulli,
    Bounded,
    Categorical,
    LogNormal,
    Normal,
    ParameterSpace,
    parse_family,
)


def full_space() -> ParameterSpace:
    return ParameterSpace(
        light=LogNormal(median=2.0, std=0.3, low=0.5, high=8.0),
        x=Normal(mean=0.5, std=0.2, low=-1.0, high=1.0),
        count=Normal(mean=4.0, std=1.5, low=1, high=9, integer=True),
        size=Bounded(low=0.2, high=0.8, mean=0.35, std=0.5),
        floor=Categorical(choices=["wood", "tile", "carpet"], probs=[0.5, 0.3, 0.2]),
        shadows=Bernoulli(p=0.25),
        fixed=Normal(mean=3.0, std=0.1, learn=False),
    )


def test_init_psi_coordinates_and_requires_grad() -> None:
    space = full_space()
    psi = space.init_psi()
    assert set(psi) == {
        "light.loc", "light.log_std", "x.loc", "x.log_std", "count.loc", "count.log_std",
        "size.loc", "size.log_std", "floor.logits", "shadows.logit", "fixed.loc", "fixed.log_std",
    }
    assert float(psi["light.loc"].detach()) == pytest.approx(math.log(2.0))
    assert float(psi["x.log_std"].detach()) == pytest.approx(math.log(0.2))
    assert float(psi["size.loc"].detach()) == pytest.approx(math.log(0.25 / 0.75))
    assert float(psi["shadows.logit"].detach()) == pytest.approx(math.log(0.25 / 0.75))
    torch.testing.assert_close(torch.softmax(psi["floor.logits"].detach(), -1), torch.tensor([0.5, 0.3, 0.2]))
    assert all(v.requires_grad for k, v in psi.items() if not k.startswith("fixed."))
    assert not psi["fixed.loc"].requires_grad
    assert "fixed.loc" not in space.learnable(psi)
    # fresh tensors each time: optimising one psi does not move another
    other = space.init_psi()
    with torch.no_grad():
        psi["x.loc"].add_(1.0)
    assert float(other["x.loc"].detach()) == pytest.approx(0.5)


def test_override_changes_only_what_it_names() -> None:
    space = full_space()
    changed = space.override({"x": {"mean": -0.5}, "floor": {"probs": [0.2, 0.2, 0.6]}})
    assert changed["x"].mean == -0.5 and changed["x"].std == 0.2 and changed["x"].high == 1.0
    assert changed["floor"].probs == [0.2, 0.2, 0.6]
    assert changed["light"] == space["light"]
    assert space["x"].mean == 0.5  # the original is untouched
    # a change naming another family replaces the parameter
    replaced = space.override({"x": {"family": "bounded", "low": 0, "high": 1, "mean": 0.5}})
    assert isinstance(replaced["x"], Bounded)


def test_override_errors() -> None:
    space = full_space()
    with pytest.raises(KeyError, match=r"unknown parameter 'nope'.*light"):
        space.override({"nope": {"mean": 1.0}})
    with pytest.raises(TypeError, match="table of settings"):
        space.override({"x": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        space.override({"x": {"mean": 5.0}})  # outside [low, high]
    with pytest.raises(ValueError):
        space.override({"x": {"meen": 1.0}})


def test_override_errors_are_one_line_and_name_the_setting() -> None:
    """Run configs report an override's error on one line (autosim run prints one line per problem)."""
    space = full_space()
    for change, words in [({"x": {"meen": 1.0}}, ["x.meen", "unknown"]),
                          ({"x": {"std": -1}}, ["x.std", "greater than 0"]),
                          ({"floor": {"probs": [0.5, 0.5]}}, ["floor", "probs has 2 entries"])]:
        with pytest.raises(ValueError) as info:
            space.override(change)
        message = str(info.value)
        assert "\n" not in message, message
        for word in words:
            assert word in message, message
        assert "tagged-union" not in message and "function-after" not in message


def test_presets_as_overrides_of_the_toy_space() -> None:
    from autosim_core.toy import ToySimulator, toy_space

    presets = ToySimulator().presets()
    target = toy_space().override(presets["target"])
    assert target.describe(target.init_psi())["x1"]["mean"] == pytest.approx(3.0)
    assert target.describe(target.init_psi())["y1"]["mean"] == pytest.approx(0.0)
    initial = toy_space().override(presets["initial"])
    assert initial.to_dict() == toy_space().to_dict()


def test_with_psi_round_trip() -> None:
    space = full_space()
    psi = space.init_psi()
    with torch.no_grad():
        psi["light.loc"].fill_(math.log(3.0))
        psi["light.log_std"].fill_(math.log(0.5))
        psi["x.loc"].fill_(-0.25)
        psi["size.loc"].fill_(1.0)
        psi["floor.logits"].copy_(torch.tensor([0.3, -0.2, 1.1]))
        psi["shadows.logit"].fill_(-0.7)
    again = space.with_psi(psi).init_psi()
    for k in psi:
        if k == "floor.logits":  # logits are defined up to a constant: compare probabilities
            torch.testing.assert_close(torch.softmax(again[k].detach(), -1), torch.softmax(psi[k].detach(), -1))
        else:
            torch.testing.assert_close(again[k].detach(), psi[k].detach(), rtol=1e-5, atol=1e-5)
    assert space.with_psi(psi)["x"].low == -1.0  # bounds are kept


def test_project_clamps_into_bounds() -> None:
    space = full_space()
    psi = space.init_psi()
    with torch.no_grad():
        psi["x.loc"].fill_(7.0)
        psi["x.log_std"].fill_(-20.0)
        psi["light.loc"].fill_(-5.0)
        psi["size.loc"].fill_(50.0)
        psi["floor.logits"].copy_(torch.tensor([30.0, 0.0, -30.0]))
        psi["shadows.logit"].fill_(-11.0)
    space.project_(psi)
    assert float(psi["x.loc"].detach()) == 1.0
    assert float(psi["x.log_std"]) == pytest.approx(math.log(1e-3))
    assert float(psi["light.loc"]) == pytest.approx(math.log(0.5))
    assert float(psi["size.loc"]) == 12.0
    assert psi["floor.logits"].tolist() == [10.0, 0.0, -10.0]
    assert float(psi["shadows.logit"]) == -10.0
    assert psi["x.loc"].requires_grad  # in place: the optimiser keeps its tensors


def test_project_respects_max_std() -> None:
    space = ParameterSpace(a=Normal(mean=0.0, std=1.0, max_std=2.0))
    psi = space.init_psi()
    with torch.no_grad():
        psi["a.log_std"].fill_(5.0)
    space.project_(psi)
    assert float(psi["a.log_std"]) == pytest.approx(math.log(2.0))


def test_records_honour_integer_clip_and_repeat() -> None:
    space = ParameterSpace(
        count=Normal(mean=4.0, std=3.0, low=1, high=6, integer=True),
        pos=Normal(mean=0.0, std=2.0, low=-1.0, high=1.0, repeat=3),
        mat=Categorical(choices=["rubber", "metal"], repeat=2),
    )
    psi = space.init_psi()
    latents = space.sample(psi, 500, torch.Generator().manual_seed(0))
    records = space.records(latents)
    assert len(records) == 500
    assert all(set(r) == {"count", "pos", "mat"} for r in records)
    counts = [r["count"] for r in records]
    assert all(isinstance(c, int) and 1 <= c <= 6 for c in counts)
    assert {1, 6} <= set(counts)  # clipping happens at both ends
    assert all(c == min(max(round(float(u)), 1), 6) for c, u in zip(counts, latents["count"][:, 0], strict=True))
    assert all(isinstance(r["pos"], list) and len(r["pos"]) == 3 for r in records)
    assert all(-1.0 <= p <= 1.0 for r in records for p in r["pos"])
    assert all(isinstance(r["mat"], list) and set(r["mat"]) <= {"rubber", "metal"} for r in records)
    json.dumps(records)  # plain, serialisable values
    lp = space.log_prob(psi, latents)
    assert lp.shape == (500,) and lp.requires_grad


@pytest.mark.parametrize("name", ["id", "seed"])
def test_reserved_names_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        ParameterSpace({name: Normal(mean=0.0)})


@pytest.mark.parametrize("name", ["with space", "3d", "a.b", ""])
def test_bad_names_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        ParameterSpace({name: Normal(mean=0.0)})


def test_space_needs_families() -> None:
    with pytest.raises(ValueError):
        ParameterSpace()
    with pytest.raises(TypeError):
        ParameterSpace(a={"family": "normal", "mean": 0.0})  # type: ignore[arg-type]


def test_family_validation() -> None:
    with pytest.raises(ValidationError):
        Normal(mean=0.0, std=0.0)
    with pytest.raises(ValidationError):
        Normal(mean=2.0, low=0.0, high=1.0)
    with pytest.raises(ValidationError):
        Bounded(low=0.0, high=1.0, mean=1.0)
    with pytest.raises(ValidationError):
        Categorical(choices=["a"])
    with pytest.raises(ValidationError):
        Categorical(choices=["a", "b"], probs=[0.3, 0.3])
    with pytest.raises(ValidationError):
        Bernoulli(p=1.0)
    with pytest.raises(ValidationError):
        LogNormal(median=-1.0)
    with pytest.raises(ValidationError):
        Normal(mean=0.0, std=0.5, min_std=1.0)
    with pytest.raises(ValidationError):
        Normal(mean=0.0, unknown=1)  # type: ignore[call-arg]


def test_to_dict_from_dict_round_trip() -> None:
    space = full_space()
    data = space.to_dict()
    again = ParameterSpace.from_dict(json.loads(json.dumps(data)))
    assert again.to_dict() == data
    assert list(again) == list(space)
    assert type(again["floor"]) is Categorical and type(again["size"]) is Bounded
    psi_a, psi_b = space.init_psi(), again.init_psi()
    for k in psi_a:
        assert torch.equal(psi_a[k].detach(), psi_b[k].detach())
    assert parse_family({"family": "bernoulli", "p": 0.4}) == Bernoulli(p=0.4)


def test_box_covers_learnable_coordinates() -> None:
    space = full_space()
    box = space.box()
    assert "fixed.loc" not in box and "fixed.log_std" not in box
    assert set(box) == {
        "light.loc", "light.log_std", "x.loc", "x.log_std", "count.loc", "count.log_std",
        "size.loc", "size.log_std", "floor.logits[0]", "floor.logits[1]", "floor.logits[2]", "shadows.logit",
    }
    psi = space.init_psi()
    for key, (lo, hi) in box.items():
        assert math.isfinite(lo) and math.isfinite(hi) and lo < hi, key
        name, coord = key.split("[")[0], None
        value = psi[name].detach().reshape(-1)
        idx = int(key.split("[")[1][:-1]) if "[" in key else 0
        coord = float(value[idx])
        assert lo <= coord <= hi, key
    assert box["x.loc"] == (-1.0, 1.0)  # clipped to the declared bounds
    assert box["light.loc"][0] == pytest.approx(math.log(0.5))
    assert box["floor.logits[0]"][0] >= -10.0
    assert box["shadows.logit"] == pytest.approx((math.log(1 / 3) - 3.0, math.log(1 / 3) + 3.0))
    lo, hi = box["x.log_std"]
    assert hi - lo == pytest.approx(2.0)


def test_describe_is_human_readable() -> None:
    space = full_space()
    d = space.describe(space.init_psi())
    assert d["x"] == {"mean": pytest.approx(0.5), "std": pytest.approx(0.2),
                      "p10": pytest.approx(0.5 - 1.2816 * 0.2, abs=1e-4),
                      "p90": pytest.approx(0.5 + 1.2816 * 0.2, abs=1e-4)}
    assert d["light"]["median"] == pytest.approx(2.0)
    assert d["floor"]["probs"] == {"wood": pytest.approx(0.5), "tile": pytest.approx(0.3),
                                   "carpet": pytest.approx(0.2)}
    assert d["shadows"] == {"p": pytest.approx(0.25)}
    json.dumps(d)


def test_with_psi_after_projection_onto_the_bounds() -> None:
    """A run ends with with_psi(psi) after project_ may have put psi exactly on a bound (in float32):
    the learned space must still be valid."""
    space = ParameterSpace(
        a=Normal(mean=0.05, std=0.5, low=-0.3, high=0.1),
        b=LogNormal(median=1.0, std=0.5, min_std=0.01, max_std=0.7),
        c=Normal(mean=0.0, std=0.2, min_std=0.1, max_std=0.3),
        d=Bounded(low=0.0, high=1.0, mean=0.5),
    )
    psi = space.init_psi()
    with torch.no_grad():
        psi["a.loc"].fill_(10.0)
        psi["a.log_std"].fill_(-50.0)
        psi["b.log_std"].fill_(-50.0)
        psi["c.log_std"].fill_(50.0)
        psi["d.loc"].fill_(50.0)
    space.project_(psi)
    learned = space.with_psi(psi)
    assert learned["a"].mean == pytest.approx(0.1) and learned["a"].mean <= 0.1
    assert learned["a"].std == pytest.approx(1e-3) and learned["a"].std >= learned["a"].min_std
    assert learned["b"].std == pytest.approx(0.01) and learned["b"].std >= 0.01
    assert learned["c"].std == pytest.approx(0.3) and learned["c"].std <= 0.3
    assert 0.0 < learned["d"].mean < 1.0
    again = learned.init_psi()
    for k in psi:
        torch.testing.assert_close(again[k].detach(), psi[k].detach(), rtol=1e-5, atol=1e-5)


def test_with_psi_round_trip_at_saturated_logits() -> None:
    space = ParameterSpace(b=Bernoulli(p=0.5), d=Bounded(low=0.0, high=1.0, mean=0.5))
    psi = space.init_psi()
    with torch.no_grad():
        psi["b.logit"].fill_(-10.0)
        psi["d.loc"].fill_(12.0)
    again = space.with_psi(psi).init_psi()
    torch.testing.assert_close(again["b.logit"].detach(), torch.tensor(-10.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again["d.loc"].detach(), torch.tensor(12.0), rtol=1e-5, atol=1e-5)


# -------------------------------------------------- exact values of the small helpers ---
def test_sampling_follows_the_generator_not_the_global_seed() -> None:
    space = ParameterSpace(c=Categorical(choices=["a", "b", "c"]), b=Bernoulli(p=0.4, repeat=2), x=Normal(mean=1.0))
    psi = space.init_psi()
    torch.manual_seed(1)
    first = space.sample(psi, 50, torch.Generator().manual_seed(7))
    torch.manual_seed(2)
    second = space.sample(psi, 50, torch.Generator().manual_seed(7))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_inverse_cdf_sampling_by_hand() -> None:
    """sample_uniform maps u through each family's inverse CDF."""
    normal = Normal(mean=1.0, std=2.0)
    u = torch.tensor([[0.975], [0.5], [0.025]], dtype=torch.float64)
    got = normal.sample_uniform(normal.psi_init(), u)
    torch.testing.assert_close(got.double().reshape(-1), torch.tensor([1 + 2 * 1.959964, 1.0, 1 - 2 * 1.959964],
                                                                      dtype=torch.float64), rtol=0, atol=1e-4)
    cat = Categorical(choices=["a", "b", "c"], probs=[0.25, 0.25, 0.5])
    # cdf (0.25, 0.5, 1): u on a step goes to the next choice; u near 1 stays on the last
    u = torch.tensor([[0.1], [0.25], [0.4], [0.5], [0.999999]], dtype=torch.float64)
    assert cat.sample_uniform(cat.psi_init(), u).reshape(-1).tolist() == [0, 1, 1, 2, 2]
    bern = Bernoulli(p=0.3)
    u = torch.tensor([[0.1], [0.29], [0.31], [0.9]])
    assert bern.sample_uniform(bern.psi_init(), u).reshape(-1).tolist() == [1.0, 1.0, 0.0, 0.0]


def test_quasi_random_draws_give_each_parameter_its_own_dimension() -> None:
    """Three one-draw parameters from the same Sobol point: three different coordinates."""
    space = ParameterSpace(x=Normal(mean=0.0), y=Normal(mean=0.0), z=Normal(mean=0.0))
    latents = space.sample_quasi(space.init_psi(), 64, torch.Generator().manual_seed(0))
    assert not torch.equal(latents["y"], latents["z"]) and not torch.equal(latents["x"], latents["y"])
    assert all(v.dtype == torch.float32 for v in latents.values())  # psi's dtype, as from sample()
    # Scrambled Sobol in 64 points: each coordinate has one point in each 1/64 of (0, 1).
    for k in "xyz":
        u = torch.special.ndtr(latents[k].double().reshape(-1))
        assert sorted((u * 64).floor().long().tolist()) == list(range(64)), k


def test_natural_gradients_by_hand() -> None:
    bern = Bernoulli(p=0.2, repeat=3)  # Fisher of the logit: repeat * p (1 - p) = 0.48
    got = bern.natural_gradient(bern.psi_init(), {"logit": torch.tensor(0.24)})
    assert float(got["logit"]) == pytest.approx(0.5, rel=1e-6)
    cat = Categorical(choices=["a", "b"], probs=[0.25, 0.75], repeat=2)
    # A logits gradient that is not centred: only its centred part (-0.5, 0.5) has a natural
    # gradient; g / p = (-2, 2/3), centred (-4/3, 4/3), over repeat 2.
    got = cat.natural_gradient(cat.psi_init(), {"logits": torch.tensor([1.0, 2.0])})
    torch.testing.assert_close(got["logits"].double(), torch.tensor([-2 / 3, 2 / 3], dtype=torch.float64),
                               rtol=1e-6, atol=1e-6)
    # The space passes each parameter's block, skipping parameters without a gradient.
    space = ParameterSpace(a=Normal(mean=0.0, std=2.0), b=Bernoulli(p=0.2, repeat=3))
    out = space.natural_gradient(space.init_psi(), {"b.logit": torch.tensor(0.24), "a.loc": torch.tensor(1.0)})
    assert set(out) == {"a.loc", "b.logit"} and float(out["b.logit"]) == pytest.approx(0.5, rel=1e-6)
    assert float(out["a.loc"]) == pytest.approx(4.0, rel=1e-6)  # Fisher of a Gaussian's loc: 1 / std^2


def test_describe_and_values_of_the_bounded_and_lognormal_families() -> None:
    bounded = Bounded(low=0.0, high=10.0, mean=2.5, std=0.5, integer=True)
    described = bounded.describe(bounded.psi_init())
    assert described["mean"] == pytest.approx(2.5) and described["std"] == pytest.approx(0.5)
    assert bounded.to_value(torch.tensor(0.0)) == 5 and isinstance(bounded.to_value(torch.tensor(0.1)), int)
    assert bounded.to_value(torch.tensor(-1000.0)) == 0
    lognormal = LogNormal(median=3.0, std=0.2)
    described = lognormal.describe(lognormal.psi_init())
    assert described["median"] == pytest.approx(3.0) and described["std"] == pytest.approx(0.2)


def test_box_skips_fixed_parameters_wherever_they_are() -> None:
    space = ParameterSpace(fixed=Normal(mean=0.0, learn=False), x=Normal(mean=1.0, std=1.0),
                           b=Bounded(low=0.0, high=1.0, mean=0.5))
    box = space.box()
    assert set(box) == {"x.loc", "x.log_std", "b.loc", "b.log_std"}
    assert box["x.loc"] == (-2.0, 4.0) and box["x.log_std"] == (-1.0, 1.0)


def test_family_errors_name_the_setting_and_what_is_allowed() -> None:
    space = ParameterSpace(x=Normal(mean=0.0, std=1.0), b=Bernoulli(p=0.5))
    cases = [({"x": {"meen": 1.0}}, "x.meen: unknown key; allowed: learn, repeat, std, min_std, max_std, family, "
                                    "mean, low, high, integer"),
             ({"x": {"std": -1.0}}, "x.std: Input should be greater than 0 (got -1.0)"),
             ({"x": {"family": "bernoulli"}}, "x.p: required key is missing"),
             ({"x": {"std": -1.0, "mean": "a"}}, None)]
    for change, expected in cases:
        with pytest.raises(ValueError) as info:
            space.override(change)
        message = str(info.value)
        if expected is not None:
            assert message == expected
        else:  # two problems, one line, joined by "; "
            assert message.count("; ") == 1 and message.startswith("x.") and "\n" not in message
    # Naming another family replaces the parameter: none of the Normal's settings carry over.
    replaced = space.override({"x": {"family": "bernoulli", "p": 0.25}})["x"]
    assert isinstance(replaced, Bernoulli) and replaced.p == 0.25


def test_with_psi_at_the_lower_bounds_and_beyond_the_bounded_range() -> None:
    space = ParameterSpace(a=Normal(mean=0.05, std=0.5, low=-0.3, high=0.1, min_std=0.05),
                           d=Bounded(low=0.0, high=1.0, mean=0.5), e=Bounded(low=2.0, high=4.0, mean=3.0))
    psi = space.init_psi()
    with torch.no_grad():
        psi["a.loc"].fill_(-10.0)
        psi["a.log_std"].fill_(-50.0)
        psi["d.loc"].fill_(-50.0)  # sigmoid rounds to the range's ends: kept 1e-9 of the range inside
        psi["e.loc"].fill_(50.0)
    learned = space.with_psi(psi)
    assert learned["a"].mean == -0.3 and learned["a"].std == 0.05
    assert learned["d"].mean == pytest.approx(1e-9, rel=1e-6)
    assert learned["e"].mean == pytest.approx(4.0 - 2e-9, abs=1e-15) and learned["e"].mean < 4.0
