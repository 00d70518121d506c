"""The psi table printed at the end of a run: values and spreads in the parameters' units."""

from __future__ import annotations

import re

import torch
from rich.console import Console

from autosim_core.observers import psi_table
from autosim_core.space import Bounded, Categorical, LogNormal, ParameterSpace


def table_text(space: ParameterSpace, psi: dict[str, torch.Tensor]) -> str:
    summary = {"psi_start": space.describe(space.init_psi()), "psi": space.describe(psi)}
    console = Console(width=200, record=True, file=None)
    with console.capture() as captured:
        console.print(psi_table(summary, list(space.parameters)))
    return captured.get()


def row(text: str, name: str) -> str:
    (line,) = [line for line in text.splitlines() if line.strip().startswith(name)]
    return line


def test_bounded_parameter_shows_a_range_inside_its_bounds() -> None:
    space = ParameterSpace(width=Bounded(low=0.0, high=0.2, mean=0.0969, std=2.1),
                           light=LogNormal(median=2.0, std=0.3))
    psi = space.init_psi()
    psi["width.loc"] = torch.tensor(0.5)
    line = row(table_text(space, psi), "width")
    ranges = re.findall(r"\[([-\d.e]+), ([-\d.e]+)\]", line)
    assert len(ranges) == 2, line
    for lo, hi in ranges:
        assert 0.0 < float(lo) < float(hi) < 0.2, line
    assert "±" not in line and "2.1" not in line  # no spread of the internal logit
    light = row(table_text(space, psi), "light")
    lo, hi = map(float, re.findall(r"\[([-\d.e]+), ([-\d.e]+)\]", light)[0])
    assert lo < 2.0 < hi and hi / 2.0 > 2.0 / lo * 0.99  # the log-normal's range is skewed upwards


def test_categorical_shows_its_probabilities() -> None:
    space = ParameterSpace(floor=Categorical(choices=["wood", "tile", "carpet"], probs=[0.5, 0.3, 0.2]),
                           shape=Categorical(choices=list("abcdef")))
    psi = space.init_psi()
    psi["shape.logits"] = torch.tensor([0.0, 3.0, 0.0, 2.0, 1.0, 0.0])
    text = table_text(space, psi)
    floor = row(text, "floor")
    assert "wood 0.50" in floor and "tile 0.30" in floor and "carpet 0.20" in floor, floor
    shape = row(text, "shape")
    # more than four choices: the three likeliest, most likely first
    assert re.search(r"\bb 0\.61, d 0\.22, e 0\.08, … \(3 more\)", shape), shape
