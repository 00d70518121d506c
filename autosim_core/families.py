"""Distribution families of a parameter space: normal, log-normal, bounded, categorical and
Bernoulli, each with a few learnable coordinates (psi), e.g. ``mean`` and ``log_std`` for a
normal. A family samples *latent* values, scores them with ``log_prob`` (differentiable in
psi) and maps them to the plain values a renderer receives (clipped, squashed, rounded or looked
up); the floors keep each family's spread from collapsing.

torch is imported inside the methods that need it, so that declaring a space stays cheap.
"""

from __future__ import annotations

import math
import re
from abc import abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

if TYPE_CHECKING:
    import torch

Psi = dict[str, "torch.Tensor"]

PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
RESERVED_NAMES = frozenset({"id", "seed"})


class Floors(BaseModel):
    """Lower bounds that keep q_psi from collapsing, as fractions of each family's reference.

    min_prob_ratio:    every choice of a categorical (both outcomes of a Bernoulli) keeps a
                       probability of at least ``min_prob_ratio / n_choices``.
    min_entropy_ratio: a categorical's (Bernoulli's) entropy stays at least this fraction of
                       its maximum, log n_choices.
    min_std_ratio:     a Gaussian-latent family's std stays at least this fraction of the std
                       the space declares (the starting one).
    A violated floor is restored by mixing the probabilities with the uniform distribution
    (the least mixing that suffices) or by raising the std to the floor.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_prob_ratio: float = Field(0.0, ge=0, lt=1)
    min_entropy_ratio: float = Field(0.0, ge=0, lt=1)
    min_std_ratio: float = Field(0.0, ge=0, le=1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-300).log()).sum()


def _mix_with_uniform(p: torch.Tensor, min_prob_ratio: float, min_entropy_ratio: float) -> torch.Tensor | None:
    """(1 - a) p + a / n for the least a in [0, 1] meeting both floors; None when a = 0 does.

    The entropy of the mixture is concave in a with its maximum at a = 1, so it grows with a
    and bisection finds the least a.
    """
    n = p.shape[-1]
    alpha = 0.0
    p_min = float(p.min())
    if min_prob_ratio > 0 and p_min < min_prob_ratio / n:
        alpha = (min_prob_ratio / n - p_min) / (1.0 / n - p_min)
    target = min_entropy_ratio * math.log(n)

    def mix(a: float) -> torch.Tensor:
        return (1 - a) * p + a / n

    if min_entropy_ratio > 0 and float(_entropy(mix(alpha))) < target:
        lo, hi = alpha, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if float(_entropy(mix(mid))) < target:
                lo = mid
            else:
                hi = mid
        alpha = hi
    return mix(alpha) if alpha > 0 else None


class BaseFamily(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    learn: bool = True
    """Whether psi of this parameter is optimised (False keeps it at its initial value)."""
    repeat: int = Field(1, ge=1)
    """Independent draws per scene; with repeat > 1 the scene holds a list of values."""

    # -- interface every family implements ----------------------------------------------
    @abstractmethod
    def psi_init(self) -> Psi: ...

    def psi_bounds(self) -> dict[str, tuple[float, float]]:
        return {}

    @abstractmethod
    def distribution(self, psi: Psi) -> torch.distributions.Distribution: ...

    @abstractmethod
    def sample(self, psi: Psi, n: int, generator: torch.Generator) -> torch.Tensor: ...

    @abstractmethod
    def to_value(self, latent: torch.Tensor) -> Any: ...

    @abstractmethod
    def describe(self, psi: Psi) -> dict[str, Any]: ...

    @abstractmethod
    def sample_uniform(self, psi: Psi, u: torch.Tensor) -> torch.Tensor:
        """Latents of shape (n, repeat) from uniforms ``u`` in (0, 1) of the same shape, by the
        inverse CDF: iid uniforms give iid draws, stratified or quasi-random ones keep their
        balance in every coordinate."""

    @abstractmethod
    def kl(self, psi_p: Psi, psi_q: Psi) -> torch.Tensor:
        """KL(q_p || q_q) of one scene's draws of this parameter (all repeats), closed form."""

    @abstractmethod
    def natural_gradient(self, psi: Psi, grad: Psi) -> Psi:
        """F^-1 grad with F the Fisher information of one scene's draws in psi's coordinates
        (the pseudo-inverse where F is singular)."""

    def floor_(self, psi: Psi, floors: Floors) -> None:
        """Move psi in place the least needed to respect ``floors`` (no-op by default)."""

    @property
    def continuous(self) -> bool:
        """Whether the value a renderer gets is a continuous function of psi at fixed noise, so that
        a pathwise (reparameterised) derivative exists: ``reparameterise`` and ``value_tensor``."""
        return False

    def reparameterise(self, psi: Psi, latent: torch.Tensor) -> torch.Tensor:
        """``latent`` (drawn from q_psi) as a function of psi differentiable at fixed noise: equal to
        ``latent`` in value. Continuous families only."""
        raise TypeError(f"the {type(self).__name__} family has no reparameterisation")

    def value_tensor(self, latent: torch.Tensor) -> torch.Tensor:
        """The values ``to_value`` gives, as a float tensor differentiable in ``latent`` (same shape).
        Continuous families only."""
        raise TypeError(f"the {type(self).__name__} family's values are not continuous")

    # -- shared ----------------------------------------------------------------------------
    def log_prob(self, psi: Psi, latent: torch.Tensor) -> torch.Tensor:
        """Log-density of latents of shape (n, repeat), summed over repeats: shape (n,)."""
        return self.distribution(psi).log_prob(latent).sum(dim=-1)

    def values(self, latent: torch.Tensor) -> list[Any]:
        out = []
        for row in latent:
            vals = [self.to_value(x) for x in row]
            out.append(vals[0] if self.repeat == 1 else vals)
        return out


_Z90 = 1.2815515655446004
"""The standard normal's 90 % quantile."""


def _clip(x: torch.Tensor, low: float | None, high: float | None) -> torch.Tensor:
    return x if low is None and high is None else x.clamp(min=low, max=high)


def _std_bounds(min_std: float, max_std: float | None) -> tuple[float, float]:
    return (math.log(min_std), math.log(max_std) if max_std is not None else math.inf)


class GaussianLatent(BaseFamily):
    """Families whose latent is u ~ N(loc, std), psi = (loc, log_std)."""

    std: float = Field(1.0, gt=0)
    min_std: float = Field(1e-3, gt=0)
    max_std: float | None = Field(None, gt=0)

    @abstractmethod
    def _loc(self) -> float: ...

    def psi_init(self) -> Psi:
        import torch

        return {"loc": torch.tensor(float(self._loc())), "log_std": torch.tensor(math.log(self.std))}

    def psi_bounds(self) -> dict[str, tuple[float, float]]:
        return {"log_std": _std_bounds(self.min_std, self.max_std)}

    def _range(self, psi: Psi) -> dict[str, float]:
        """The 10 % and 90 % quantiles of the value the renderer gets, in the parameter's units
        (``std`` is the spread of the latent u, which for bounded and log-normal families is not)."""
        import torch

        loc, std = float(psi["loc"]), float(psi["log_std"].exp())
        # to_value is monotone in the latent, so it maps the latent's quantiles to the value's.
        return {f"p{q}": float(self.to_value(torch.tensor(loc + z * std)))
                for q, z in ((10, -_Z90), (90, _Z90))}

    def distribution(self, psi: Psi) -> torch.distributions.Distribution:
        import torch

        return torch.distributions.Normal(psi["loc"], psi["log_std"].exp())

    def sample(self, psi: Psi, n: int, generator: torch.Generator) -> torch.Tensor:
        import torch

        with torch.no_grad():
            eps = torch.randn((n, self.repeat), generator=generator)
            return psi["loc"].detach() + psi["log_std"].detach().exp() * eps

    def sample_uniform(self, psi: Psi, u: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.no_grad():
            eps = torch.special.ndtri(u.double()).to(psi["loc"].dtype)
            return psi["loc"].detach() + psi["log_std"].detach().exp() * eps

    def kl(self, psi_p: Psi, psi_q: Psi) -> torch.Tensor:
        log_ratio = psi_q["log_std"] - psi_p["log_std"]
        var_ratio = (2 * (psi_p["log_std"] - psi_q["log_std"])).exp()
        mean_term = (psi_p["loc"] - psi_q["loc"]) ** 2 / (2 * (2 * psi_q["log_std"]).exp())
        return self.repeat * (log_ratio + var_ratio / 2 + mean_term - 0.5)

    def natural_gradient(self, psi: Psi, grad: Psi) -> Psi:
        # In (loc, log_std) the Fisher information of N(loc, std) is diag(1 / std^2, 2).
        var = (2 * psi["log_std"].detach()).exp()
        return {"loc": grad["loc"] * var / self.repeat, "log_std": grad["log_std"] / (2 * self.repeat)}

    def floor_(self, psi: Psi, floors: Floors) -> None:
        if floors.min_std_ratio > 0:
            with_floor = math.log(floors.min_std_ratio * self.std)
            psi["log_std"].data.clamp_(min=with_floor)

    @property
    def continuous(self) -> bool:
        return not getattr(self, "integer", False)

    def reparameterise(self, psi: Psi, latent: torch.Tensor) -> torch.Tensor:
        # u = loc + std * eps with eps = (u - loc) / std held fixed: the noise the draw came from
        # (for a scene drawn at another psi, the noise that gives the same u at this one).
        std = psi["log_std"].exp()
        eps = ((latent - psi["loc"]) / std).detach()
        return psi["loc"] + std * eps

    @model_validator(mode="after")
    def _check_std(self) -> GaussianLatent:
        if self.std < self.min_std:
            raise ValueError(f"std={self.std} is below min_std={self.min_std}")
        if self.max_std is not None and self.std > self.max_std:
            raise ValueError(f"std={self.std} is above max_std={self.max_std}")
        return self


class Normal(GaussianLatent):
    """s ~ N(mean, std); the renderer gets s clipped to [low, high] (rounded if integer)."""

    family: Literal["normal"] = "normal"
    mean: float
    low: float | None = None
    high: float | None = None
    integer: bool = False

    def _loc(self) -> float:
        return self.mean

    @model_validator(mode="after")
    def _check_range(self) -> Normal:
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError(f"low={self.low} must be below high={self.high}")
        if (self.low is not None and self.mean < self.low) or (
            self.high is not None and self.mean > self.high
        ):
            raise ValueError(f"mean={self.mean} lies outside [{self.low}, {self.high}]")
        return self

    def psi_bounds(self) -> dict[str, tuple[float, float]]:
        lo = -math.inf if self.low is None else self.low
        hi = math.inf if self.high is None else self.high
        return {"loc": (lo, hi), **super().psi_bounds()}

    def to_value(self, latent: torch.Tensor) -> float | int:
        x = float(latent)
        if self.low is not None:
            x = max(x, self.low)
        if self.high is not None:
            x = min(x, self.high)
        return round(x) if self.integer else x

    def value_tensor(self, latent: torch.Tensor) -> torch.Tensor:
        return _clip(latent, self.low, self.high)

    def describe(self, psi: Psi) -> dict[str, Any]:
        return {"mean": float(psi["loc"]), "std": float(psi["log_std"].exp()), **self._range(psi)}


class LogNormal(GaussianLatent):
    """log s ~ N(log median, std): positive quantities such as light intensities."""

    family: Literal["lognormal"] = "lognormal"
    median: float = Field(gt=0)
    low: float | None = Field(None, ge=0)
    high: float | None = Field(None, gt=0)
    integer: bool = False

    def _loc(self) -> float:
        return math.log(self.median)

    def psi_bounds(self) -> dict[str, tuple[float, float]]:
        lo = -math.inf if not self.low else math.log(self.low)
        hi = math.inf if self.high is None else math.log(self.high)
        return {"loc": (lo, hi), **super().psi_bounds()}

    def to_value(self, latent: torch.Tensor) -> float | int:
        x = math.exp(float(latent))
        if self.low is not None:
            x = max(x, self.low)
        if self.high is not None:
            x = min(x, self.high)
        return round(x) if self.integer else x

    def value_tensor(self, latent: torch.Tensor) -> torch.Tensor:
        return _clip(latent.exp(), self.low, self.high)

    def describe(self, psi: Psi) -> dict[str, Any]:
        return {"median": math.exp(float(psi["loc"])), "std": float(psi["log_std"].exp()), **self._range(psi)}


class Bounded(GaussianLatent):
    """s = low + (high - low) * sigmoid(u), u ~ N(logit of ``mean``'s position, std).

    ``mean`` is the value the renderer gets for u at its centre; ``std`` is the spread of u.
    """

    family: Literal["bounded"] = "bounded"
    low: float
    high: float
    mean: float
    integer: bool = False

    @model_validator(mode="after")
    def _check_range(self) -> Bounded:
        if not self.low < self.mean < self.high:
            raise ValueError(f"mean={self.mean} must lie strictly inside ({self.low}, {self.high})")
        return self

    def _loc(self) -> float:
        p = (self.mean - self.low) / (self.high - self.low)
        return math.log(p / (1 - p))

    def psi_bounds(self) -> dict[str, tuple[float, float]]:
        return {"loc": (-12.0, 12.0), **super().psi_bounds()}

    def to_value(self, latent: torch.Tensor) -> float | int:
        u = float(latent)
        x = self.low + (self.high - self.low) / (1.0 + math.exp(-u)) if u > -700 else self.low
        return round(x) if self.integer else x

    def value_tensor(self, latent: torch.Tensor) -> torch.Tensor:
        return self.low + (self.high - self.low) * latent.sigmoid()

    def describe(self, psi: Psi) -> dict[str, Any]:
        centre = self.low + (self.high - self.low) * (1 / (1 + math.exp(-float(psi["loc"]))))
        return {"mean": centre, "std": float(psi["log_std"].exp()), **self._range(psi)}


Choice = str | int | float | bool


class Categorical(BaseFamily):
    """One of ``choices``; psi = logits (initialised from ``probs``, uniform by default)."""

    family: Literal["categorical"] = "categorical"
    choices: list[Choice] = Field(min_length=2)
    probs: list[float] | None = None
    max_logit: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _check_probs(self) -> Categorical:
        if self.probs is not None:
            if len(self.probs) != len(self.choices):
                raise ValueError(f"probs has {len(self.probs)} entries for {len(self.choices)} choices")
            if any(p <= 0 for p in self.probs):
                raise ValueError("probs must all be > 0")
            if abs(sum(self.probs) - 1.0) > 1e-6:
                raise ValueError(f"probs must sum to 1 (they sum to {sum(self.probs)})")
        return self

    def psi_init(self) -> Psi:
        import torch

        probs = self.probs or [1.0 / len(self.choices)] * len(self.choices)
        logits = torch.tensor([math.log(p) for p in probs])
        return {"logits": logits - logits.mean()}

    def psi_bounds(self) -> dict[str, tuple[float, float]]:
        return {"logits": (-self.max_logit, self.max_logit)}

    def distribution(self, psi: Psi) -> torch.distributions.Distribution:
        import torch

        return torch.distributions.Categorical(logits=psi["logits"])

    def sample(self, psi: Psi, n: int, generator: torch.Generator) -> torch.Tensor:
        import torch

        probs = torch.softmax(psi["logits"].detach(), dim=-1)
        return torch.multinomial(probs, n * self.repeat, replacement=True, generator=generator).view(
            n, self.repeat
        )

    def sample_uniform(self, psi: Psi, u: torch.Tensor) -> torch.Tensor:
        import torch

        cdf = torch.cumsum(torch.softmax(psi["logits"].detach().double(), dim=-1), dim=-1)
        idx = torch.searchsorted(cdf, u.double().contiguous(), right=True)
        return idx.clamp_(max=len(self.choices) - 1)

    def kl(self, psi_p: Psi, psi_q: Psi) -> torch.Tensor:
        import torch

        log_p = torch.log_softmax(psi_p["logits"], dim=-1)
        log_q = torch.log_softmax(psi_q["logits"], dim=-1)
        return self.repeat * (log_p.exp() * (log_p - log_q)).sum()

    def natural_gradient(self, psi: Psi, grad: Psi) -> Psi:
        # F = diag(p) - p p^T is singular along the all-ones direction (logits + c give the same
        # q); for a gradient orthogonal to it (every score-function gradient of logits is), the
        # pseudo-inverse solution is g / p, centred.
        import torch

        p = torch.softmax(psi["logits"].detach(), dim=-1)
        g = grad["logits"] - grad["logits"].mean()
        x = g / p
        return {"logits": (x - x.mean()) / self.repeat}

    def floor_(self, psi: Psi, floors: Floors) -> None:
        import torch

        logits = psi["logits"].data
        p = torch.softmax(logits.double(), dim=-1)
        mixed = _mix_with_uniform(p, floors.min_prob_ratio, floors.min_entropy_ratio)
        if mixed is not None:
            new = mixed.log()
            logits.copy_((new - new.mean()).to(logits.dtype))

    def to_value(self, latent: torch.Tensor) -> Choice:
        return self.choices[int(latent)]

    def describe(self, psi: Psi) -> dict[str, Any]:
        import torch

        probs = torch.softmax(psi["logits"].detach(), dim=-1).tolist()
        return {"probs": {str(c): p for c, p in zip(self.choices, probs, strict=True)}}


class Bernoulli(BaseFamily):
    """True with probability p; psi = logit(p)."""

    family: Literal["bernoulli"] = "bernoulli"
    p: float = Field(gt=0, lt=1)
    max_logit: float = Field(10.0, gt=0)

    def psi_init(self) -> Psi:
        import torch

        return {"logit": torch.tensor(math.log(self.p / (1 - self.p)))}

    def psi_bounds(self) -> dict[str, tuple[float, float]]:
        return {"logit": (-self.max_logit, self.max_logit)}

    def distribution(self, psi: Psi) -> torch.distributions.Distribution:
        import torch

        return torch.distributions.Bernoulli(logits=psi["logit"])

    def sample(self, psi: Psi, n: int, generator: torch.Generator) -> torch.Tensor:
        import torch

        p = torch.sigmoid(psi["logit"].detach())
        return (torch.rand((n, self.repeat), generator=generator) < p).float()

    def sample_uniform(self, psi: Psi, u: torch.Tensor) -> torch.Tensor:
        import torch

        return (u < torch.sigmoid(psi["logit"].detach())).to(torch.get_default_dtype())

    def kl(self, psi_p: Psi, psi_q: Psi) -> torch.Tensor:
        import torch

        f = torch.nn.functional
        lp1, lp0 = f.logsigmoid(psi_p["logit"]), f.logsigmoid(-psi_p["logit"])
        lq1, lq0 = f.logsigmoid(psi_q["logit"]), f.logsigmoid(-psi_q["logit"])
        return self.repeat * (lp1.exp() * (lp1 - lq1) + lp0.exp() * (lp0 - lq0))

    def natural_gradient(self, psi: Psi, grad: Psi) -> Psi:
        p = psi["logit"].detach().sigmoid()
        return {"logit": grad["logit"] / (p * (1 - p) * self.repeat)}

    def floor_(self, psi: Psi, floors: Floors) -> None:
        import torch

        logit = psi["logit"].data
        p1 = torch.sigmoid(logit.double())
        mixed = _mix_with_uniform(torch.stack([1 - p1, p1]), floors.min_prob_ratio, floors.min_entropy_ratio)
        if mixed is not None:
            logit.copy_((mixed[1].log() - mixed[0].log()).to(logit.dtype))

    def to_value(self, latent: torch.Tensor) -> bool:
        return bool(latent > 0.5)

    def describe(self, psi: Psi) -> dict[str, Any]:
        return {"p": float(psi["logit"].sigmoid())}


Family = Annotated[
    Normal | LogNormal | Bounded | Categorical | Bernoulli, Field(discriminator="family")
]
_FAMILY_ADAPTER: TypeAdapter[Any] = TypeAdapter(Family)


def parse_family(data: Mapping[str, Any]) -> BaseFamily:
    """Build a family from plain data such as ``{"family": "normal", "mean": 1, "std": 0.2}``."""
    return _FAMILY_ADAPTER.validate_python(dict(data))


FAMILIES: dict[str, type[BaseFamily]] = {
    cls.model_fields["family"].default: cls for cls in (Normal, LogNormal, Bounded, Categorical, Bernoulli)
}
