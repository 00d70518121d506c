"""Parameter spaces: the learnable sampling distribution q_psi(s) of a simulator.

A space is a set of named parameters, each with a distribution family (``families.py``). The
core samples *latent* values from the families, scores them with ``log_prob`` (differentiable in
psi) and maps them to the plain values a renderer receives.

torch is imported inside the methods that need it, so that declaring a space stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .families import (
    FAMILIES,
    PARAMETER_NAME,
    RESERVED_NAMES,
    BaseFamily,
    Bernoulli,
    Bounded,
    Categorical,
    Family,
    Floors,
    GaussianLatent,
    LogNormal,
    Normal,
    Psi,
    parse_family,
)

if TYPE_CHECKING:
    import torch

__all__ = ["RESERVED_NAMES", "Bernoulli", "Bounded", "Categorical", "Family", "Floors", "LogNormal", "Normal",
           "ParameterSpace", "Psi", "UnknownParameterError", "parse_family"]

class UnknownParameterError(KeyError):
    """A change names a parameter the space does not have (printed without KeyError's quotes)."""

    def __str__(self) -> str:
        return str(self.args[0])


def _family_error(name: str, exc: ValidationError) -> ValueError:
    """One line naming ``<parameter>.<setting>`` for each problem of a family's settings."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        family = FAMILIES.get(loc[0]) if loc else None
        if family is not None:
            loc = loc[1:]  # the union's tag, not a key the user wrote
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(family.model_fields) if family is not None else ""
            msg = "unknown key" + (f"; allowed: {allowed}" if allowed else "")
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif not isinstance(err.get("input"), Mapping):
            msg += f" (got {err.get('input')!r})"
        parts.append(f"{'.'.join([name, *loc])}: {msg}")
    return ValueError("; ".join(parts))


class ParameterSpace:
    """Named parameters of a simulator, each a distribution family with learnable psi.

    ``psi`` is a flat dict ``{"<parameter>.<coordinate>": tensor}``; samples are per-parameter
    latent tensors of shape (n, repeat); records are the plain dicts a renderer consumes.
    """

    def __init__(self, parameters: Mapping[str, BaseFamily] | None = None, /, **kwargs: BaseFamily):
        merged = {**(parameters or {}), **kwargs}
        if not merged:
            raise ValueError("a parameter space needs at least one parameter")
        for name, fam in merged.items():
            if not PARAMETER_NAME.match(name):
                raise ValueError(f"parameter name {name!r} must be an identifier (letters, digits, _ or -)")
            if name in RESERVED_NAMES:
                raise ValueError(f"parameter name {name!r} is reserved for the scene record")
            if not isinstance(fam, BaseFamily):
                raise TypeError(f"parameter {name!r} must be a family such as Normal(...), got {fam!r}")
        self.parameters: dict[str, BaseFamily] = dict(merged)

    def __iter__(self) -> Iterator[str]:
        return iter(self.parameters)

    def __len__(self) -> int:
        return len(self.parameters)

    def __getitem__(self, name: str) -> BaseFamily:
        return self.parameters[name]

    def __repr__(self) -> str:
        return f"ParameterSpace({', '.join(f'{k}={v!r}' for k, v in self.parameters.items())})"

    # -- psi ---------------------------------------------------------------------------------
    def init_psi(self) -> Psi:
        """Fresh psi tensors at the declared initial values (learnable ones require grad)."""
        psi = {}
        for name, fam in self.parameters.items():
            for coord, value in fam.psi_init().items():
                psi[f"{name}.{coord}"] = value.clone().requires_grad_(fam.learn)
        return psi

    def learnable(self, psi: Psi) -> dict[str, torch.Tensor]:
        return {k: v for k, v in psi.items() if self.parameters[k.split(".", 1)[0]].learn}

    def _psi_of(self, psi: Psi, name: str) -> Psi:
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in psi.items() if k.startswith(prefix)}

    def project_(self, psi: Psi) -> None:
        """Clamp psi in place into each family's bounds (after an optimiser step)."""
        import torch

        with torch.no_grad():
            for name, fam in self.parameters.items():
                for coord, (lo, hi) in fam.psi_bounds().items():
                    if lo > -math.inf or hi < math.inf:
                        psi[f"{name}.{coord}"].clamp_(min=lo if lo > -math.inf else None,
                                                      max=hi if hi < math.inf else None)

    def box(self) -> dict[str, tuple[float, float]]:
        """Finite search box over the learnable psi coordinates, for black-box searchers.

        Unbounded coordinates get a box of +-3 around their initial value (log_std: +-1).
        """
        out: dict[str, tuple[float, float]] = {}
        for name, fam in self.parameters.items():
            if not fam.learn:
                continue
            bounds = fam.psi_bounds()
            for coord, init in fam.psi_init().items():
                lo, hi = bounds.get(coord, (-math.inf, math.inf))
                width = 1.0 if coord == "log_std" else 3.0
                for i, v in enumerate(init.reshape(-1).tolist()):
                    key = f"{name}.{coord}" + (f"[{i}]" if init.dim() else "")
                    out[key] = (max(lo, v - width), min(hi, v + width))
        return out

    def natural_scales(self) -> dict[str, float]:
        """The unit of each psi coordinate: the declared std of a Gaussian-latent family's centre
        (``loc`` is in the parameter's units, degrees or metres), 1 for log-stds and logits, which
        are unitless already. Steps and distances divided by it compare across parameters."""
        return {f"{name}.{coord}": (fam.std if coord == "loc" and isinstance(fam, GaussianLatent) else 1.0)
                for name, fam in self.parameters.items() for coord in fam.psi_init()}

    def describe(self, psi: Psi) -> dict[str, dict[str, Any]]:
        """Human-readable psi: means, stds, probabilities per parameter."""
        detached = {k: v.detach() for k, v in psi.items()}
        return {name: fam.describe(self._psi_of(detached, name)) for name, fam in self.parameters.items()}

    # -- sampling and scoring ------------------------------------------------------------------
    def sample(self, psi: Psi, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {name: fam.sample(self._psi_of(psi, name), n, generator)
                for name, fam in self.parameters.items()}

    def sample_quasi(self, psi: Psi, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """n scenes from a scrambled Sobol sequence, one dimension per parameter draw.

        Each scene is still a draw from q_psi (a scrambled point is uniform on the cube), but the
        n scenes cover every coordinate's range evenly. The scrambling seed comes from
        ``generator``, so a run stays reproducible from its seed.
        """
        import torch

        dims = sum(fam.repeat for fam in self.parameters.values())
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        engine = torch.quasirandom.SobolEngine(dims, scramble=True, seed=seed)
        u = engine.draw(n, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
        out, start = {}, 0
        for name, fam in self.parameters.items():
            out[name] = fam.sample_uniform(self._psi_of(psi, name), u[:, start:start + fam.repeat])
            start += fam.repeat
        return out

    def kl(self, psi_p: Psi, psi_q: Psi) -> torch.Tensor:
        """KL(q_psi_p || q_psi_q) of one scene, the sum of its parameters' closed forms."""
        import torch

        total = torch.zeros((), dtype=torch.float64)
        for name, fam in self.parameters.items():
            total = total + fam.kl(self._psi_of(psi_p, name), self._psi_of(psi_q, name)).double()
        return total

    def natural_gradient(self, psi: Psi, grad: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """F^-1 grad for the coordinates in ``grad``: the parameters are independent, so F is
        block-diagonal, one closed-form block per parameter."""
        out: dict[str, torch.Tensor] = {}
        for name, fam in self.parameters.items():
            g = self._psi_of(dict(grad), name)
            if not g:
                continue
            p = self._psi_of(psi, name)
            full = {k: g.get(k, p[k].new_zeros(p[k].shape)) for k in p}
            for coord, value in fam.natural_gradient(p, full).items():
                if coord in g:
                    out[f"{name}.{coord}"] = value
        return out

    def apply_floors_(self, psi: Psi, floors: Floors) -> None:
        """Restore ``floors`` in place for the learnable parameters (after an optimiser step)."""
        for name, fam in self.parameters.items():
            if fam.learn:
                fam.floor_(self._psi_of(psi, name), floors)

    def log_prob(self, psi: Psi, latents: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """log q_psi(s_k) for each of the n sampled scenes, shape (n,), differentiable in psi."""
        total = None
        for name, fam in self.parameters.items():
            lp = fam.log_prob(self._psi_of(psi, name), latents[name])
            total = lp if total is None else total + lp
        assert total is not None
        return total

    def records(self, latents: Mapping[str, torch.Tensor]) -> list[dict[str, Any]]:
        columns = {name: fam.values(latents[name]) for name, fam in self.parameters.items()}
        n = len(next(iter(columns.values())))
        return [{name: col[i] for name, col in columns.items()} for i in range(n)]

    # -- variants ------------------------------------------------------------------------------
    def override(self, changes: Mapping[str, Mapping[str, Any]]) -> ParameterSpace:
        """A copy with some parameters' settings changed, e.g. ``{"light": {"mean": 2.0}}``.

        A change that names ``family`` replaces the parameter's family altogether.
        """
        params = dict(self.parameters)
        for name, change in changes.items():
            if name not in params:
                raise UnknownParameterError(f"unknown parameter {name!r}; the space has: {', '.join(params)}")
            if not isinstance(change, Mapping):
                raise TypeError(f"the change for {name!r} must be a table of settings, got {change!r}")
            try:
                if "family" in change and change["family"] != params[name].family:  # type: ignore[attr-defined]
                    params[name] = parse_family(change)
                else:
                    params[name] = parse_family({**params[name].model_dump(), **change})
            except ValidationError as exc:
                raise _family_error(name, exc) from None
        return ParameterSpace(params)

    def with_psi(self, psi: Psi) -> ParameterSpace:
        """The space whose initial values are ``psi`` (to start a new run from a learned psi)."""
        import torch

        def clip(x: float, lo: float | None, hi: float | None) -> float:
            # psi sits exactly on a bound after project_, which float32 may round to just outside it
            return min(max(x, -math.inf if lo is None else lo), math.inf if hi is None else hi)

        def std(fam: GaussianLatent, p: Psi) -> float:
            return clip(float(p["log_std"].exp()), fam.min_std, fam.max_std)

        changes: dict[str, dict[str, Any]] = {}
        detached = {k: v.detach() for k, v in psi.items()}
        for name, fam in self.parameters.items():
            p = self._psi_of(detached, name)
            if isinstance(fam, Normal):
                changes[name] = {"mean": clip(float(p["loc"]), fam.low, fam.high), "std": std(fam, p)}
            elif isinstance(fam, LogNormal):
                changes[name] = {"median": math.exp(float(p["loc"])), "std": std(fam, p)}
            elif isinstance(fam, Bounded):
                centre = fam.low + (fam.high - fam.low) * float(torch.sigmoid(p["loc"].double()))
                eps = 1e-9 * (fam.high - fam.low)
                changes[name] = {"mean": min(max(centre, fam.low + eps), fam.high - eps), "std": std(fam, p)}
            elif isinstance(fam, Categorical):
                probs = torch.softmax(p["logits"].detach().double(), -1)
                changes[name] = {"probs": (probs / probs.sum()).tolist()}
            elif isinstance(fam, Bernoulli):
                changes[name] = {"p": float(torch.sigmoid(p["logit"].double()))}
        return self.override(changes)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: fam.model_dump() for name, fam in self.parameters.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> ParameterSpace:
        return cls({name: parse_family(spec) for name, spec in data.items()})
