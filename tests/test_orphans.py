"""``autosim compare --executor processes`` killed with SIGKILL leaves no process behind: its
worker processes die with it (and so would the render workers a run started, by the same means),
and the run folders' locks are free for the ``--resume`` that follows."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kill_harness import toml, toy_config

from autosim_core.rundir import CHECKPOINT, LOCK

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.processes,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the processes from /proc")]


def marked(mark: str) -> set[int]:
    """Live (not zombie) processes whose environment holds ``AUTOSIM_TEST_MARK=mark``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"AUTOSIM_TEST_MARK={mark}".encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rpartition(")")[2].split()[0] == "Z":
                continue
        except OSError:  # gone meanwhile, or not ours
            continue
        found.add(int(entry.name))
    return found


def test_sigkill_of_compare_on_processes_leaves_no_worker_running(tmp_path: Path, cache_dir: Path) -> None:
    long = dict(toy_config(cache_dir), budget={"iterations": 100_000})
    (tmp_path / "toy.toml").write_text(toml(long))
    (tmp_path / "toy_fixed.toml").write_text(toml(dict(long, searcher={"name": "fixed"})))
    out = tmp_path / "out"
    mark = uuid.uuid4().hex
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", AUTOSIM_TEST_MARK=mark,
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    runs = [out / "toy" / "seed-0", out / "toy_fixed" / "seed-0"]
    with open(tmp_path / "compare.log", "wb") as log:
        compare = subprocess.Popen([sys.executable, "-m", "autosim_core.cli", "compare", str(tmp_path / "toy.toml"),
                                    str(tmp_path / "toy_fixed.toml"), "--out", str(out), "--executor", "processes",
                                    "--workers", "2"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while not all((run / CHECKPOINT).exists() for run in runs):  # both runs are in their loops
            assert compare.poll() is None, (tmp_path / "compare.log").read_text()
            assert time.monotonic() < deadline, "the runs did not start within 180 s"
            time.sleep(0.1)
        before = marked(mark)
        holders = {int((run / LOCK).read_text()) for run in runs}
        # The workers hold the run folders' locks, so a late one keeps any other process out of its folder.
        assert compare.pid not in holders and holders <= before, (holders, before)
        # compare, its forkserver and resource tracker, and the two run workers.
        assert len(before) >= 5, before
    finally:
        compare.send_signal(signal.SIGKILL)
        compare.wait()
    deadline = time.monotonic() + 10
    while (left := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"still running 10 s after the kill: {sorted(left)}"
    for run in runs:  # nobody holds the locks: a --resume would run these folders
        with open(run / LOCK, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
