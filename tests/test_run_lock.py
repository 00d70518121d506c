"""One process at a time runs in a run folder: a second ``autosim run`` or ``--resume`` on it is
refused while the first lives, and the first one's death (even by SIGKILL) frees the folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kill_harness import toml, toy_config
from typer.testing import CliRunner

from autosim_core.cli import app
from autosim_core.config import load_config
from autosim_core.rundir import CHECKPOINT, LOCK, RunFolderBusyError, read_rows

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="run folders are locked with flock")


def busy(out: Path, pid: int) -> str:
    return f"error: {out} is locked by a run in progress (pid {pid}); wait for it to end or stop it"


def test_a_second_run_on_a_live_runs_folder_is_refused_until_the_first_dies(tmp_path: Path,
                                                                           cache_dir: Path) -> None:
    long, short = tmp_path / "long.toml", tmp_path / "short.toml"
    long.write_text(toml(dict(toy_config(cache_dir), budget={"iterations": 100_000})))
    short.write_text(toml(dict(toy_config(cache_dir), budget={"iterations": 1})))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    with open(tmp_path / "first.log", "wb") as log:
        # --resume on a folder that does not exist yet: the run starts, and says so.
        first = subprocess.Popen([sys.executable, "-m", "autosim_core.cli", "run", str(long), "--out", str(out),
                                  "--resume"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT).exists():  # the first run is in its loop
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "the first run did not start within 120 s"
            time.sleep(0.1)
        assert (out / LOCK).read_text() == f"{first.pid}\n"

        runner = CliRunner()
        for args in (["run", str(long), "--out", str(out)], ["run", str(long), "--out", str(out), "--resume"]):
            result = runner.invoke(app, args)
            assert result.exit_code == 2, result.output
            assert result.stderr.strip() == busy(out, first.pid)
        from autosim_core.run import Run

        with pytest.raises(RunFolderBusyError, match=rf"\(pid {first.pid}\)"):
            Run(load_config(long), out).execute(resume=True)
        assert first.poll() is None  # the first run goes on, its history whole
        rows = [r["iteration"] for r in read_rows(out / "history.jsonl")]
        assert rows == list(range(1, len(rows) + 1))

        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
        started = f"--resume: nothing to resume in {out}; starting the run"
        assert started in (tmp_path / "first.log").read_text().splitlines()
        # The kernel dropped the dead process's lock: a resume takes the folder (its budget, now
        # smaller than the iterations done, ends it at once).
        result = runner.invoke(app, ["run", str(short), "--out", str(out), "--resume"])
        assert result.exit_code == 0, result.output
        assert (out / "summary.json").exists()
        assert (out / LOCK).read_text() == ""  # released when the run ended
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
