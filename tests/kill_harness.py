"""Kill ``autosim run`` with SIGKILL at random moments, resuming it each time.

``python tests/kill_harness.py FOLDER --kills 10 --seed 0`` takes a small toy config (from
examples/toy.toml) and, in FOLDER/killed, starts ``autosim run --resume``, sends SIGKILL after a
random 0.1-0.9 s (``--low``, ``--high``), looks at what the folder holds, starts the same command
again, and so on ``--kills`` times, then lets the last one finish; then it runs the same config
uninterrupted (FOLDER/reference). Every start, the first included, passes ``--resume``, as a job
scheduler requeueing the same command line does: a start killed before it wrote anything is
started again. It prints one line per kill and writes FOLDER/report.json.

Two short runs first go through the CLI's entry point in this process; each killed ``autosim
run`` is a child forked from it afterwards, running the same entry point. A kill then
lands in the run's set-up or loop rather than in Python's imports, which on a small machine take
longer than the delays. The budget (iterations) is sized from a short timed run so that the
run outlasts the kills; should a start finish before its kill all the same, the budget is
raised (which ``--resume`` allows) and the kills go on.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import signal
import statistics
import sys
import time
import tomllib
from pathlib import Path
from typing import Any


def toy_config(cache: Path) -> dict[str, Any]:
    """examples/toy.toml with a smaller validation set and no test set."""
    data = tomllib.loads((Path(__file__).resolve().parents[1] / "examples" / "toy.toml").read_text())
    data["validation"]["count"] = 200
    data.pop("test")
    data["cache_dir"] = str(cache)
    return data


def toml(data: dict[str, Any]) -> str:
    """A config as TOML: top-level keys, then one table per dict (nested dicts inline)."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v)

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for table, items in data.items():
        if isinstance(items, dict):
            lines += ["", f"[{table}]", *(f"{k} = {value(v)}" for k, v in items.items())]
    return "\n".join(lines) + "\n"


def cli(args: list[str]) -> int:
    """``autosim ARGS`` through the CLI's entry point, in this process; its exit code."""
    import torch

    from autosim_core.cli import main

    torch.manual_seed(0)  # the same global random state in every process, whatever ran before
    sys.argv = ["autosim", *args]
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def run_cli(args: list[str]) -> int:
    """Fork a child running ``autosim ARGS``; returns its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            code = cli(args)
        finally:
            os._exit(code)
    return pid


def exited(pid: int) -> bool:
    """Whether the child has ended, without reaping it (``wait`` still reads its status)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def folder_state(folder: Path) -> dict[str, Any]:
    """What a kill left behind: the checkpoint's iteration, the rows on disk, a torn last row,
    half-written temporary files."""
    import torch

    from autosim_core.rundir import CHECKPOINT, HISTORY

    state: dict[str, Any] = {"config": (folder / "config.json").exists(), "summary": (folder / "summary.json").exists(),
                             "checkpoint": None, "rows": [],
                             "torn_row": False, "temporary_files": sorted(p.name for p in folder.glob(".*.tmp"))}
    if (folder / CHECKPOINT).exists():
        state["checkpoint"] = int(torch.load(folder / CHECKPOINT, weights_only=True)["iteration"])
    if (folder / HISTORY).exists():
        text = (folder / HISTORY).read_text()
        for line in text.split("\n"):
            if not line.strip():
                continue
            try:
                state["rows"].append(json.loads(line)["iteration"])
            except ValueError:
                state["torn_row"] = True
    return state


def where(state: dict[str, Any]) -> str:
    if not state["config"]:
        return "before the run folder was written"
    if state["checkpoint"] is None:
        return "during set-up (config.json written, no checkpoint)"
    ckpt, rows = state["checkpoint"], state["rows"]
    if state["summary"]:
        return f"after the last iteration ({ckpt}), the summary written"
    text = f"in iteration {ckpt + 1} (checkpoint at {ckpt}"
    if len(rows) > ckpt:
        text += f", row {rows[-1]} written past it"
    if state["torn_row"]:
        text += ", a torn last row"
    if state["temporary_files"]:
        text += f", half-written {', '.join(state['temporary_files'])}"
    return text + ")"


def describe(delay: float | str) -> str:
    if delay == "config":
        return "once config.json appeared"
    if isinstance(delay, str):
        return f"{loop_delay(delay):.2f} s after the start's first checkpoint"
    return f"after {delay:.2f} s"


def loop_delay(token: str) -> float:
    """``loop`` -> 0, ``loop+0.05`` -> 0.05: seconds after a start's first checkpoint."""
    return float(token.removeprefix("loop").removeprefix("+") or 0.0)


def parse_delay(text: str) -> float | str:
    if text == "config":
        return text
    if text.startswith("loop"):
        loop_delay(text)  # a malformed one fails here, before any run
        return text
    return float(text)


def checkpoint_id(folder: Path) -> tuple[int, int] | None:
    """The checkpoint file's identity (inode, mtime): a new checkpoint is renamed into place."""
    from autosim_core.rundir import CHECKPOINT

    try:
        stat = (folder / CHECKPOINT).stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--low", type=float, default=0.1)
    parser.add_argument("--high", type=float, default=0.9)
    parser.add_argument("--delays", help="the kills' delays in seconds, comma-separated (instead of --kills "
                        "random ones between --low and --high); 'config': as soon as config.json appears (a "
                        "kill in the set-up, whose window on an idle machine is a few milliseconds); 'loop' or "
                        "'loop+S': S seconds after the start writes its first checkpoint (in the loop however "
                        "slow the machine is)")
    parser.add_argument("--cache", type=Path, help="cache of rendered validation sets (default: FOLDER/cache)")
    args = parser.parse_args()
    args.cache = args.cache or args.folder / "cache"

    rng = random.Random(args.seed)
    delays: list[float | str] = [rng.uniform(args.low, args.high) for _ in range(args.kills)] \
        if args.delays is None else [parse_delay(d) for d in args.delays.split(",")]
    # Two short runs first. The first imports everything a run imports on its way (plugins,
    # observers, lazily imported modules), so that later runs, and the children, start at once;
    # the second times a start's set-up and an iteration.
    args.folder.mkdir(parents=True, exist_ok=True)
    config = args.folder / "toy.toml"
    data = toy_config(args.cache)
    config.write_text(toml(dict(data, budget={"iterations": 4})))
    from autosim_core.run import Run

    checkpoint_times: list[float] = []
    write_checkpoint = Run._checkpoint

    def timed_checkpoint(self: Run, *a: Any, **k: Any) -> None:
        write_checkpoint(self, *a, **k)
        checkpoint_times.append(time.perf_counter())

    for name in ("warm-up", "timing"):
        checkpoint_times.clear()
        Run._checkpoint = timed_checkpoint  # type: ignore[method-assign]
        start = time.perf_counter()
        try:
            if cli(["run", str(config), "--out", str(args.folder / name)]) != 0:
                raise SystemExit(f"the {name} run failed")
        finally:
            Run._checkpoint = write_checkpoint  # type: ignore[method-assign]
    set_up = checkpoint_times[0] - start  # until the checkpoint of iteration 0
    per_iteration = statistics.median(b - a for a, b in itertools.pairwise(checkpoint_times))
    # What the killed starts could get done at this process's pace; forked children on a busy
    # machine get about half of it done, on an idle one all of it (the budget is then raised).
    progress = sum(max(0.0, d - set_up) for d in delays if isinstance(d, float)) / per_iteration
    progress += sum(1 + loop_delay(d) / per_iteration for d in delays if isinstance(d, str) and d != "config")
    iterations = math.ceil(progress) + 4
    config.write_text(toml(dict(data, budget={"iterations": iterations})))

    killed = args.folder / "killed"
    kills: list[dict[str, Any]] = []
    extended: list[int] = []
    starts = 0
    while len(kills) < len(delays):
        resume = (killed / "config.json").exists()  # whether this start has a run to resume
        delay = delays[len(kills)]
        before = checkpoint_id(killed)
        pid = run_cli(["run", str(config), "--out", str(killed), "--resume"])
        starts += 1
        if delay == "config":
            deadline = time.perf_counter() + 60
            while not (killed / "config.json").exists() and time.perf_counter() < deadline:
                time.sleep(0.0005)
        elif isinstance(delay, str):
            deadline = time.perf_counter() + 120
            while checkpoint_id(killed) == before and time.perf_counter() < deadline and not exited(pid):
                time.sleep(0.001)
            time.sleep(loop_delay(delay))
        else:
            time.sleep(delay)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        code = wait(pid)
        # A loop-anchored kill that found the run already done (summary written, the process not yet
        # gone) is not the kill in the loop it names: like a start that finished, it is tried again.
        last = folder_state(killed)["checkpoint"] if isinstance(delay, str) and delay != "config" else None
        done_first = code == -signal.SIGKILL and last is not None and last >= iterations
        if (code == 0 or done_first) and len(extended) < 5:
            # The run got done before this kill (the children ran faster than the timing run
            # said): a larger budget continues it, which --resume allows; the uninterrupted run
            # below gets the same final budget.
            iterations += max(10, iterations // 2)
            extended.append(iterations)
            config.write_text(toml(dict(data, budget={"iterations": iterations})))
            print(f"start {starts} finished before its kill; budget raised to {iterations}", flush=True)
            continue
        if code != -signal.SIGKILL:
            raise SystemExit(f"start {starts} ended with {code} before its kill ({describe(delay)})")
        state = folder_state(killed)
        kills.append({"delay": delay if isinstance(delay, str) else round(delay, 3), "resumed": resume, **state,
                      "where": where(state)})
        print(f"kill {len(kills):2d} {describe(delay)}: {where(state)}", flush=True)
    code = wait(run_cli(["run", str(config), "--out", str(killed), "--resume"]))
    if code != 0:
        raise SystemExit(f"the last resume ended with {code}")

    reference = args.folder / "reference"
    if cli(["run", str(config), "--out", str(reference)]) != 0:
        raise SystemExit("the uninterrupted run failed")
    report = {"iterations": iterations, "budget_raised_to": extended, "set_up_seconds": set_up,
              "seconds_per_iteration": per_iteration, "kills": kills}
    (args.folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
