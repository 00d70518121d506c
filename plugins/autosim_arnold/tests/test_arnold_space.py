from __future__ import annotations

import math

import pytest
import torch
from arnold_testing import needs_bpy, record
from autosim_core import Categorical, ParameterSpace
from autosim_core.space import GaussianLatent

from autosim_arnold.params import MAX_OBJECTS, ArnoldSettings, arnold_presets, arnold_space, cells, useful_cells
from autosim_arnold.scene import ALL_ROOMS, parse_cell


def test_default_space_is_54_cells_room_major() -> None:
    choices = arnold_space().parameters["cell"].choices
    assert len(choices) == 54 and len(set(choices)) == 54
    assert choices[:3] == ["kitchen:0:low", "kitchen:0:high", "kitchen:1:low"]
    for c in choices:
        room, _, location, quality = parse_cell(c)
        assert room.name in ("kitchen", "office", "living") and 0 <= location < 9 and quality in ("low", "high")


def test_counts_come_from_the_settings() -> None:
    s = ArnoldSettings(rooms=["office", "kitchen"], locations=4, qualities=["high"])
    choices = arnold_space(s).parameters["cell"].choices
    assert len(choices) == 2 * 4 * 1
    assert choices[0] == "office:0:high" and choices[-1] == "kitchen:3:high"


@pytest.mark.parametrize("bad", [{"rooms": ["attic"]}, {"rooms": []}, {"locations": 10}, {"qualities": []},
                                 {"qualities": ["low", "low"]}])
def test_bad_counts_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        ArnoldSettings(**bad)


def test_sampling_reaches_every_cell() -> None:
    space = arnold_space()
    psi = space.init_psi()
    latents = space.sample(psi, 54 * 40, torch.Generator().manual_seed(0))
    seen = {r["cell"] for r in space.records(latents)}
    assert seen == set(space.parameters["cell"].choices)


def test_log_prob_matches_the_logits() -> None:
    space = arnold_space().override({"light": {"learn": True}, "n_objects": {"learn": True}})
    psi = space.init_psi()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        psi["cell.logits"].copy_(torch.randn(54, generator=g) * 2)
        psi["light.loc"].fill_(0.3)
    latents = space.sample(psi, 50, g)
    got = space.log_prob(psi, latents)

    logits = psi["cell.logits"].detach().double().tolist()
    log_norm = math.log(sum(math.exp(v) for v in logits))

    def normal(x: float, mean: float, std: float) -> float:
        return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)

    for k in range(50):
        want = logits[int(latents["cell"][k, 0])] - log_norm
        want += normal(float(latents["light"][k, 0]), 0.3, 0.25)
        want += normal(float(latents["camera_distance"][k, 0]), 0.0, 0.1)
        want += normal(float(latents["n_objects"][k, 0]), 4.0, 1.5)
        assert float(got[k].detach()) == pytest.approx(want, abs=1e-4)
    # and the gradient of the categorical part is one-hot minus the probabilities
    got[0].backward()
    probs = torch.softmax(psi["cell.logits"].detach(), -1)
    onehot = torch.nn.functional.one_hot(latents["cell"][0, 0], 54).float()
    assert torch.allclose(psi["cell.logits"].grad, onehot - probs, atol=1e-6)


def test_presets() -> None:
    s = ArnoldSettings()
    presets = arnold_presets(s)
    assert set(presets) == {"uniform", "matched", "target", "wide"}
    space = arnold_space(s)
    matched = space.override(presets["matched"]).parameters["cell"]
    useful = set(useful_cells(s))
    assert len(useful) == 9 and all(c.endswith(":high") for c in useful)
    mass = sum(p for c, p in zip(matched.choices, matched.probs, strict=True) if c in useful)
    assert mass == pytest.approx(0.8)
    target = space.override(presets["target"]).parameters["cell"]
    assert all(parse_cell(c)[0].name == "workshop" for c in target.choices)
    assert not set(target.choices) & set(cells(s))  # held out: no training cell renders the target room
    assert "workshop" in ALL_ROOMS


# ------------------------------------------------------------------ the wide preset ---
def spread(space: ParameterSpace, name: str) -> float:
    """How broad a parameter's draws are: a Gaussian family's latent std, a categorical's entropy."""
    psi = {k: v.detach() for k, v in space.init_psi().items()}
    if isinstance(space[name], GaussianLatent):
        return float(psi[f"{name}.log_std"].exp())
    assert isinstance(space[name], Categorical)
    p = torch.softmax(psi[f"{name}.logits"].double(), -1)
    return float(-(p * p.log()).sum())


@pytest.mark.parametrize("settings", [ArnoldSettings(), ArnoldSettings(rooms=["office"], locations=4,
                                                                        qualities=["high"])])
def test_wide_is_broader_than_the_default_wherever_it_differs(settings: ArnoldSettings) -> None:
    declared = arnold_space(settings)
    presets = arnold_presets(settings)
    start = declared.override(presets["uniform"])  # where the placement runs start
    wide = declared.override(presets["wide"])
    changed = [n for n in wide if wide[n] != start[n]]
    assert set(changed) == {"light", "camera_distance", "n_objects"}
    for name in changed:
        assert spread(wide, name) > spread(start, name), name
    cell = wide["cell"]
    assert cell.choices == cells(settings)
    assert spread(wide, "cell") == pytest.approx(math.log(len(cell.choices)))  # every cell equally likely
    assert [n for n in wide if wide[n].learn] == ["cell"]  # it changes what is sampled, not what is learnt


def test_wide_spreads_the_knobs_over_their_declared_ranges() -> None:
    wide = arnold_space().override(arnold_presets()["wide"])
    psi = {k: v.detach() for k, v in wide.init_psi().items()}
    for name in ("light", "camera_distance"):
        lo, hi = wide[name].psi_bounds()["loc"]
        loc, std = float(psi[f"{name}.loc"]), float(psi[f"{name}.log_std"].exp())
        assert loc == pytest.approx((lo + hi) / 2, abs=0.02), name  # centred (in log units)
        assert 0.85 < (hi - lo) / (2 * std) / 1.96 < 1.15, name  # ~95 % of the draws inside the range
    counts = [r["n_objects"] for r in wide.records(wide.sample(psi, 4000, torch.Generator().manual_seed(0)))]
    shares = [counts.count(k) / len(counts) for k in range(1, MAX_OBJECTS + 1)]
    assert min(shares) > 0.07 and max(shares) < 0.2, shares  # every count of objects is common


@needs_bpy
def test_wide_renders() -> None:
    from autosim_arnold.plugin import render_records

    wide = arnold_space().override(arnold_presets()["wide"])
    gen = torch.Generator().manual_seed(4)
    records = wide.records(wide.sample(wide.init_psi(), 3, gen))
    for i, r in enumerate(records):
        r["id"], r["seed"] = i, 100 + i
        r["cell"] = r["cell"].replace(":high", ":low")  # the cheap quality: this checks the knobs' values
    examples = render_records(records, ArnoldSettings(image_size=24, threads=1))
    assert len(examples) == 3
    for example in examples:
        assert example.image.shape == (3, 24, 24) and torch.isfinite(example.image).all()


def test_bad_cell_is_named() -> None:
    with pytest.raises(ValueError, match="attic:0:low"):
        parse_cell(record("attic:0:low")["cell"])
