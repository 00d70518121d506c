"""Shared helpers: toy run configs built from examples/toy.toml, small and fast."""

from __future__ import annotations

import copy
import errno
import os
import tomllib
from collections.abc import Callable
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


def _no_space(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _half_written_savefig(self: Any, fname: Any, *args: Any, **kwargs: Any) -> None:
    """``Figure.savefig`` on a full disk: half a PNG reaches the target, then ENOSPC."""
    half = b"\x89PNG\r\n\x1a\nhalf"
    if isinstance(fname, str | os.PathLike):
        with open(fname, "wb") as f:
            f.write(half)
    else:
        fname.write(half)
    _no_space()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``full_disk()`` fills the disk from then on: figures are written half, then fail, and so does
    every ``os.fsync`` (where a full disk shows when the data is flushed); ``figures=True``: only the
    figures."""

    def fill(*, figures: bool = False) -> None:
        from matplotlib.figure import Figure

        monkeypatch.setattr(Figure, "savefig", _half_written_savefig)
        if not figures:
            monkeypatch.setattr(os, "fsync", _no_space)

    return fill
