"""The run folder: its files, how they are written, and how they are read back.

A run folder holds ``config.json`` (the resolved config), ``config.toml`` (the text it was
started from), ``history.jsonl`` (one row per iteration, plus event lines), ``checkpoint.pt``,
``psi.json``, ``snapshots.json`` (the psi handed over at fractions of the budget) and
``summary.json``; ``autosim train`` adds ``final/``. Every file is written whole or not at all
(``atomic_write``); history rows are appended, flushed and synced before the checkpoint that
includes them, so a run killed at any moment resumes from its last checkpoint to the same
result. One process at a time runs in a folder: it holds ``.lock`` (an exclusive ``flock``) from
``prepare`` until the run ends, and the kernel drops it when the process dies. The run,
``autosim compare``, ``autosim generate`` and the observers all read and write a run folder
through this module.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

try:
    import fcntl
except ImportError:  # Windows has no flock: a run folder goes unlocked there
    fcntl = None  # type: ignore[assignment]

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.jsonl"
CONFIG_JSON = "config.json"
CONFIG_TOML = "config.toml"
PSI = "psi.json"
SUMMARY = "summary.json"
SNAPSHOTS = "snapshots.json"
FINAL = "final"
"""The folder ``autosim train`` writes into by default (``final.json``, ``model.pt``)."""
LOCK = ".lock"
"""The file whose ``flock`` the process running the folder holds; it holds that process's pid."""
RESUMABLE_CHANGES = frozenset({"budget", "executor", "observers", "final_training"})
"""Top-level config tables a resumed run may change."""
TMP_SUFFIX = ".tmp"
"""Ending of the temporary file ``atomic_write`` writes before renaming it into place."""


class DamagedHistoryError(ValueError):
    """A run folder's history.jsonl cannot be matched with its checkpoint (or the checkpoint cannot be read)."""


class RunFolderBusyError(RuntimeError):
    """Another live process runs in the run folder (it holds the folder's lock)."""


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` whole or not at all: into a temporary file beside it, flushed to disk,
    then renamed over ``path`` (a rename within a folder is atomic), and the folder synced so
    the rename itself survives a crash. A write that fails leaves the old file intact; a
    process killed mid-way also leaves at most a ``.NAME.tmp`` file, which a resumed run removes."""
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves no half file behind
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None: JSON has no NaN, and a
    history row must read back in any JSON reader."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    try:  # a tensor or numpy scalar: a float, as json.dumps(default=float) would write it
        number = float(value)
    except (TypeError, ValueError):
        return value
    return number if math.isfinite(number) else None


def read_rows(history_path: str | Path) -> list[dict[str, Any]]:
    """The iteration rows of a history.jsonl (event lines such as render retries left out)."""
    path = Path(history_path)
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if "event" not in row]


class RunFolder:
    """One run's folder (see the module's docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd: int | None = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def history(self) -> Path:
        return self.path / HISTORY

    def holds_run(self) -> bool:
        return self.history.exists() or self.checkpoint.exists()

    def lock(self) -> None:
        """Take the (existing) folder's exclusive lock for this process.

        ``flock`` belongs to the open file: the kernel releases it when the process dies, however
        it dies, so a kill never strands it, and a lock file left behind locks nothing. The file
        is opened close-on-exec, so worker processes started by exec do not hold it.
        """
        if fcntl is None or self._lock_fd is not None:
            return
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderBusyError(f"{self.path} is locked by a run in progress (pid {holder}); wait for it to "
                                     "end or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        """Release the folder's lock (if this process holds it)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no pid names a process that no longer runs here
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def prepare(self, resume: bool, config: dict[str, Any]) -> dict[str, Any] | None:
        """The checkpoint to resume from (None: start from scratch), with the folder made ready
        and locked for this process (``lock``; ``unlock`` when the run ends).

        A run that has written ``config.json`` but no checkpoint yet (it died during set-up)
        resumes from scratch, which gives the same run; so does ``resume`` on a folder that holds
        nothing of a run yet (none, or one killed before ``config.json``), so that a requeued
        ``--resume`` command finishes a run killed in its first second. Resuming also drops the
        history rows past the checkpoint (and a row torn by a kill), so that the iterations redone
        from the checkpoint are logged once. ``config`` is the run's resolved config
        (``config.json``), which must match the stored one (``check_resumable``).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        try:
            return self._prepare(resume, config)
        except BaseException:
            self.unlock()
            raise

    def _prepare(self, resume: bool, config: dict[str, Any]) -> dict[str, Any] | None:
        if resume:
            for leftover in self.path.glob(f".*{TMP_SUFFIX}"):  # files a kill left half-written
                leftover.unlink()
            if not (self.path / CONFIG_JSON).exists():
                found = [name for name in (CHECKPOINT, HISTORY, SNAPSHOTS, PSI, SUMMARY) if (self.path / name).exists()]
                if found:
                    raise FileNotFoundError(f"--resume: {self.path} holds {', '.join(found)} but no {CONFIG_JSON}, so "
                                            "the config it ran under cannot be checked; it is not resumed")
                logging.getLogger("autosim").warning("--resume: nothing to resume in %s; starting the run", self.path)
                return None
            self.check_resumable(config)
            state = self.load_checkpoint() if self.checkpoint.exists() else None
            self.truncate_history(int(state["iteration"]) if state is not None else 0, started=state is not None)
            return state
        if self.holds_run():
            raise FileExistsError(f"{self.path} already holds a run; pass --resume to continue it "
                                  "or choose another --out")
        return None

    def check_resumable(self, config: dict[str, Any]) -> None:
        """A run resumes only under the config it started with; its budget may grow, and where it
        renders and what watches it (``RESUMABLE_CHANGES``) may change, as they change no result."""
        from .config import RunConfig

        stored = json.loads((self.path / CONFIG_JSON).read_text())
        current = json.loads(json.dumps(config, default=str))
        # A top-level key added to the config since the run started is the same when the run
        # uses its default (a folder written before ``max_nonfinite`` existed resumes with 3).
        for key, field in RunConfig.model_fields.items():
            if key not in stored and key in current and not field.is_required() and \
                    current[key] == json.loads(json.dumps(field.get_default(call_default_factory=True), default=str)):
                stored[key] = current[key]
        changed = sorted(k for k in set(stored) | set(current)
                         if k not in RESUMABLE_CHANGES and stored.get(k) != current.get(k))
        if changed:
            raise FileExistsError(f"--resume: the config differs from the one {self.path} was started with "
                                  f"(in: {', '.join(changed)}); only [budget], [executor], [observers] and "
                                  "[final_training] may change")

    def truncate_history(self, iteration: int, started: bool = True) -> None:
        """Keep the history rows of iterations 1..``iteration`` (those the checkpoint includes).

        Rows are written before their checkpoint, so every checkpointed iteration has its row;
        the rows after it belong to iterations the resumed run does again. A kill during a
        write can leave the last line torn: it is dropped like any row past the checkpoint.
        Event lines (render retries, ``event`` key) carry the iteration they happened in and
        follow the same rule; those of set-up (iteration 0) go when set-up is done again
        (``started`` False: no checkpoint yet).
        """
        path = self.history
        if not path.exists():
            # The first checkpoint (iteration 0) is written before history.jsonl is opened.
            if iteration > 0:
                raise DamagedHistoryError(f"{path} is missing, but the checkpoint is at iteration {iteration}; "
                                          "the history is lost")
            return
        text = path.read_text()
        lines = text.split("\n")
        kept: list[str] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                if number == len(lines):  # the last line, without its newline: torn by a kill
                    break
                raise DamagedHistoryError(f"{path}: line {number} is not a JSON row; the history is damaged"
                                          ) from None
            if not isinstance(row, dict) or type(row.get("iteration")) is not int:
                raise DamagedHistoryError(f"{path}: line {number} is JSON but not a row (an object with an integer "
                                          f"'iteration'): {line[:80]}; the history is damaged") from None
            if row["iteration"] > iteration:
                continue
            if "event" in row and not started:  # a retry during a set-up that is done again
                continue
            kept.append(line)
        found = [row["iteration"] for row in map(json.loads, kept) if "event" not in row]
        if found != list(range(1, iteration + 1)):
            raise DamagedHistoryError(f"{path}: rows of iterations {found} do not match the checkpoint's "
                                      f"1..{iteration}; the history is damaged")
        new_text = "".join(line + "\n" for line in kept)
        if new_text != text:
            atomic_write(path, lambda f: f.write(new_text.encode()))

    def write_json(self, name: str, data: Any) -> None:
        write_json(self.path / name, data)

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.path / name, lambda f: f.write(text.encode()))

    def append_event(self, row: dict[str, Any]) -> None:
        with self.history.open("a") as history:
            history.write(json.dumps(row, default=str) + "\n")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        import torch

        atomic_write(self.checkpoint, lambda f: torch.save(state, f))

    def load_checkpoint(self) -> dict[str, Any]:
        import torch

        try:
            state = torch.load(self.checkpoint, weights_only=True)
        except Exception as exc:  # truncated or overwritten: torch raises several kinds
            raise DamagedHistoryError(
                f"{self.checkpoint} cannot be read (truncated, or not a checkpoint: {type(exc).__name__}); the run "
                f"cannot be continued: start it again in a new --out, or delete {self.path}") from None
        if not isinstance(state, dict) or not isinstance(state.get("iteration"), int):
            raise DamagedHistoryError(f"{self.checkpoint} is no run checkpoint (no iteration in it); the run cannot "
                                      f"be continued: start it again in a new --out, or delete {self.path}")
        return state

    def resume_hint(self) -> str:
        if self.checkpoint.exists():
            return (f"the run stopped; its last checkpoint is {self.checkpoint}: continue it with "
                    f"`autosim run CONFIG --out {self.path} --resume`")
        return f"the run stopped before its first checkpoint ({self.path})"


class HistoryWriter:
    """Appends iteration rows to history.jsonl, each flushed and synced before it returns."""

    def __init__(self, folder: RunFolder):
        self._file = folder.history.open("a")

    def append(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(strict_json(row), default=float, allow_nan=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
