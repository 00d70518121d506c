from __future__ import annotations

import math

import pytest
import torch
from arnold_testing import record

from autosim_arnold.params import ArnoldSettings, arnold_presets, arnold_space, cells, useful_cells
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
    assert set(presets) == {"uniform", "matched", "target"}
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


def test_bad_cell_is_named() -> None:
    with pytest.raises(ValueError, match="attic:0:low"):
        parse_cell(record("attic:0:low")["cell"])
