"""The black-box searchers' view of a parameter space: a box of coordinates, and the sampling
distribution each point of it stands for.

The box has, per learnable parameter of the space, its centre (the mean of a normal or
bounded family, the log-median of a log-normal, ``p`` of a Bernoulli), its spread (the log of
the std of the Gaussian families' latent, when ``spreads`` is on, up to a spread as wide as the
parameter's bounds) and, for a categorical, its mix: one weight in [0, 1] per choice, the
probabilities being the weights (each plus ``WEIGHT_FLOOR``, so no choice is ever ruled out)
normalised. Equal weights are the uniform mix, one weight far above the others is nearly
one-hot. The older form, ``categoricals = "choice"``, has one coordinate naming the favoured
choice, which gets ``choice_weight`` while the others share the rest.

What the box cannot express: any dependence between parameters (each is searched on its own),
and any shape other than the parameter's family (a normal stays a normal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .space import Bernoulli, Bounded, Categorical, LogNormal, Normal, ParameterSpace

Point = dict[str, float | int | str]
"""A point of the search box: coordinate name -> value (a choice's label for categoricals)."""

Categoricals = Literal["mix", "choice"]
"""How a categorical is searched: a mix of its choices (a weight each) or one favoured choice."""

SPREAD_RANGE = 10.0
"""A spread is searched from start / 10 (or the family's min_std) up to start * 10, or up to a
spread covering the parameter's declared range where that is wider (and at most max_std)."""
UNBOUNDED_WIDTH = 4.0
"""A centre with no declared bound on one side is searched up to 4 start stds that way."""
LOG_DECADES = math.log(1000.0)
"""A log-normal bounded only above (or at 0) is searched over three decades below its high."""
LOGISTIC_STD = math.pi / math.sqrt(3.0)
"""The std of the logit of a uniform value: a bounded family's latent with this spread, centred,
spreads its values about evenly over (low, high)."""
WEIGHT_FLOOR = 0.01
"""Added to every weight of a mix before normalising: with n choices the least probability is
0.01 / (1 + 0.01 n) (0.0097 for three), the most 1.01 / (1 + 0.01 n) (0.98 for three)."""


@dataclass(frozen=True)
class Coordinate:
    """One dimension of the search box, in the units searched (log units where ``log`` is in
    the name): ``float`` and ``int`` coordinates lie in [low, high]; ``choice`` ones in
    ``choices``. ``role`` says what it sets of its parameter: the centre, the spread, the
    weight of choice ``index`` in a mix, or the favoured choice."""

    name: str
    parameter: str
    kind: Literal["float", "int", "choice"]
    low: float = 0.0
    high: float = 1.0
    choices: tuple[str, ...] = ()
    role: Literal["centre", "spread", "weight", "choice"] = "centre"
    index: int = 0

    def clip(self, value: float) -> float | int:
        value = min(max(value, self.low), self.high)
        return round(value) if self.kind == "int" else value


def covering_std(fam: Any) -> float | None:
    """The latent std of a distribution as wide as the parameter's declared range, or None
    where the range is open on a side: half the range for a normal (one std either side of
    the middle reaches both bounds), half the log-range for a log-normal, and for a bounded
    family, whose latent is the logit of the value's position, the logit of a uniform's."""
    if isinstance(fam, Bounded):
        return LOGISTIC_STD
    if isinstance(fam, Normal) and fam.low is not None and fam.high is not None:
        return (fam.high - fam.low) / 2
    if isinstance(fam, LogNormal) and fam.low and fam.high is not None:
        return (math.log(fam.high) - math.log(fam.low)) / 2
    return None


def mix(weights: list[float]) -> list[float]:
    """The probabilities a mix's weights stand for."""
    floored = [float(w) + WEIGHT_FLOOR for w in weights]
    total = sum(floored)
    return [w / total for w in floored]


def start_weights(probs: list[float]) -> list[float]:
    """Weights in [0, 1] whose mix is ``probs``: scaled so the largest is 0.5 (room to move
    either way), or higher if the least probability needs it, up to 1; a probability too small
    even then gets weight 0 (the floor's probability)."""
    top, least = max(probs), min(probs)
    scale = min(max((0.5 + WEIGHT_FLOOR) / top, WEIGHT_FLOOR / least), (1.0 + WEIGHT_FLOOR) / top)
    return [min(max(scale * p - WEIGHT_FLOOR, 0.0), 1.0) for p in probs]


class SearchBox:
    """The black-box searchers' view of a parameter space (see the module's docstring)."""

    def __init__(self, space: ParameterSpace, *, spreads: bool = True, categoricals: Categoricals = "mix",
                 choice_weight: float = 0.85):
        self.space = space
        self.spreads = spreads
        self.categoricals = categoricals
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
            labels = tuple(str(c) for c in fam.choices)
            if self.categoricals == "choice":
                return [Coordinate(f"{name}.choice", name, "choice", choices=labels, role="choice")]
            return [Coordinate(f"{name}.weight.{i}", name, "float", 0.0, 1.0, role="weight", index=i)
                    for i in range(len(labels))]
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
        hi = math.log(max(std * SPREAD_RANGE, covering_std(fam) or 0.0))
        if fam.max_std is not None:
            hi = min(hi, math.log(fam.max_std))
        return [centre, Coordinate(f"{name}.log_std", name, "float", lo, hi, role="spread")]

    # -- points <-> distributions -----------------------------------------------------------
    def start_point(self) -> Point:
        """The point closest to the space as declared (where REINFORCE's policy starts)."""
        point: Point = {}
        for c in self.coordinates:
            fam = self.space[c.parameter]
            if c.role == "choice":
                probs = fam.psi_init()["logits"].softmax(-1)
                point[c.name] = c.choices[int(probs.argmax())]
            elif c.role == "weight":
                declared = fam.probs or [1.0 / len(fam.choices)] * len(fam.choices)
                point[c.name] = c.clip(start_weights(declared)[c.index])
            elif c.role == "spread":
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

    def probs(self, point: Mapping[str, Any], parameter: str) -> list[float]:
        """The probabilities of a categorical's choices at ``point`` (a checked point)."""
        coordinates = [c for c in self.coordinates if c.parameter == parameter]
        if coordinates and coordinates[0].role == "choice":
            c = coordinates[0]
            rest = (1.0 - self.choice_weight) / (len(c.choices) - 1)
            return [self.choice_weight if label == point[c.name] else rest for label in c.choices]
        return mix([float(point[c.name]) for c in coordinates if c.role == "weight"])

    def space_at(self, point: Mapping[str, Any]) -> ParameterSpace:
        """The sampling distribution a point stands for."""
        point = self.check(point)
        changes: dict[str, dict[str, Any]] = {}
        for c in self.coordinates:
            fam = self.space[c.parameter]
            change = changes.setdefault(c.parameter, {})
            value = point[c.name]
            if c.role in ("choice", "weight"):
                if "probs" not in change:
                    change["probs"] = self.probs(point, c.parameter)
            elif c.role == "spread":
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
