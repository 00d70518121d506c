"""The ``wide`` preset: broad hand-set randomisation, broader than ``initial`` wherever it differs."""

from __future__ import annotations

import math

import torch
from autosim_core import Bernoulli, Categorical, ParameterSpace
from autosim_core.space import GaussianLatent

from autosim_clevr.contact_sheet import sample_records
from autosim_clevr.params import ClevrSettings, clevr_presets, clevr_space
from autosim_clevr.plugin import clevr_simulator, render_records


def spread(space: ParameterSpace, name: str) -> float:
    """How broad one parameter's draws are: the latent std of a Gaussian family, the entropy of
    a categorical or Bernoulli, from the psi the space starts at."""
    fam = space[name]
    psi = {k.split(".", 1)[1]: v.detach() for k, v in space.init_psi().items() if k.startswith(name + ".")}
    if isinstance(fam, GaussianLatent):
        return float(psi["log_std"].exp())
    if isinstance(fam, Categorical):
        p = torch.softmax(psi["logits"].double(), -1)
    else:
        assert isinstance(fam, Bernoulli)
        q = torch.sigmoid(psi["logit"].double())
        p = torch.stack([q, 1 - q])
    return float(-(p * p.log()).sum())


def max_entropy(fam: object) -> float:
    return math.log(len(fam.choices)) if isinstance(fam, Categorical) else math.log(2)


def clipped(space: ParameterSpace, name: str) -> float:
    """The share of a Gaussian family's latent draws beyond its declared bounds (clipped there)."""
    fam = space[name]
    psi = {k: v.detach() for k, v in space.init_psi().items()}
    loc, std = float(psi[f"{name}.loc"]), float(psi[f"{name}.log_std"].exp())
    lo, hi = fam.psi_bounds()["loc"]
    normal = torch.distributions.Normal(torch.tensor(loc, dtype=torch.float64), std)
    below = float(normal.cdf(torch.tensor(lo, dtype=torch.float64))) if lo > -math.inf else 0.0
    above = 1 - float(normal.cdf(torch.tensor(hi, dtype=torch.float64))) if hi < math.inf else 0.0
    return below + above


def spaces() -> tuple[ParameterSpace, ParameterSpace, ParameterSpace]:
    space = clevr_space()
    presets = clevr_presets()
    return space, space.override(presets["initial"]), space.override(presets["wide"])


def test_wide_is_a_preset_of_the_simulator_and_overrides_its_space() -> None:
    assert "wide" in clevr_simulator.presets()
    declared, _, wide = spaces()
    assert set(wide) == set(declared)
    assert wide.to_dict() != declared.to_dict()


def test_wide_is_broader_than_initial_wherever_it_differs() -> None:
    declared, initial, wide = spaces()
    changed = [n for n in wide if wide[n] != initial[n]]
    assert set(changed) == set(clevr_presets()["wide"]), "every parameter the preset names must differ"
    for name in changed:
        assert spread(wide, name) > spread(initial, name), name
    for name in wide:  # and narrower than the space's own declaration nowhere
        assert spread(wide, name) >= spread(declared, name) - 1e-9, name


def test_wide_spreads_every_learnable_parameter_over_its_range() -> None:
    _, _, wide = spaces()
    learnable = [n for n in wide if wide[n].learn]
    assert learnable
    for name in learnable:
        fam = wide[name]
        if isinstance(fam, Categorical | Bernoulli):
            assert spread(wide, name) >= 0.99 * max_entropy(fam), name  # every choice about as likely
        else:
            # broad, yet not so broad that the draws pile up at the bounds
            assert clipped(wide, name) < 0.1, (name, clipped(wide, name))
    described = wide.describe(wide.init_psi())
    assert described["x"]["p10"] < -2.5 and described["x"]["p90"] > 2.5  # objects across the floor
    assert described["ambient"]["p90"] / described["ambient"]["p10"] > 10  # dim to bright, tenfold


def test_wide_renders() -> None:
    records = sample_records("wide", 4, seed=5)
    examples = render_records(records, ClevrSettings(output_size=(24, 32), max_samples=2))
    assert len(examples) == 4
    for example in examples:
        assert example.image.shape == (3, 24, 32) and torch.isfinite(example.image).all()
        assert 0 <= float(example.image.min()) and float(example.image.max()) <= 1
        assert example.mask.shape == (24, 32) and int(example.mask.max()) <= 3
