"""Shared helpers: toy run configs built from examples/toy.toml, small and fast."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOY_TOML = ROOT / "examples" / "toy.toml"

# The suite shares two cores with other work: one intra-op thread keeps the tiny models fast
# and the runs (resume equivalence) bit-for-bit reproducible.
torch.set_num_threads(1)


def toy_data(cache_dir: Path, *, estimator: str = "quadratic", iterations: int = 6,
             val_count: int = 200, test: bool = False) -> dict[str, Any]:
    """examples/toy.toml as a dict, with a short budget, a small validation set and ``cache_dir``."""
    data = tomllib.loads(TOY_TOML.read_text())
    if estimator != data["estimator"]["name"]:
        data["estimator"] = {"name": estimator}
    data["budget"] = {"iterations": iterations}
    data["cache_dir"] = str(cache_dir)
    data["validation"]["count"] = val_count
    if not test:
        data.pop("test")
    return copy.deepcopy(data)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of rendered validation sets for the whole session."""
    return tmp_path_factory.mktemp("autosim-cache")


@pytest.fixture(scope="session")
def toy_example() -> dict[str, Any]:
    return tomllib.loads(TOY_TOML.read_text())


@pytest.fixture(scope="session")
def make_toy_data():
    """The ``toy_data`` builder, for tests (conftest is not importable as a module)."""
    return toy_data


@pytest.fixture
def fake_processes(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """``executor.kind = "processes"`` on in-process workers (tests/fake_workers.py): the pools'
    handling of workers that die, raise or hang, without real processes. Returns the backends
    made, in order."""
    import fake_workers
    import flaky_simulator

    from autosim_core import workers

    made: list[Any] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        made.append(fake_workers.FakeProcesses(*args, **kwargs))
        return made[-1]

    monkeypatch.setitem(workers.BACKENDS, "processes", make)
    monkeypatch.setattr(flaky_simulator, "crash", fake_workers.crash)
    monkeypatch.setattr(flaky_simulator, "hang", fake_workers.hang)
    return made
