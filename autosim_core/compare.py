"""Several methods under one budget over several seeds: tables and curves (paper, Table 2).

Everything here reads finished run folders (``config.json``, ``summary.json``,
``history.jsonl``), so a comparison can be rebuilt from folders alone. A *method* is one
config (named by its file's stem); its runs are indexed by seed offset: seed index ``i`` ran
with ``config.seed + i``, and runs of different methods with the same index are paired
(thresholds and the gap closed are computed per seed index).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .compare_plots import plot_comparison, plot_quality
from .rundir import CONFIG_JSON, FINAL, HISTORY, SUMMARY, atomic_write, read_rows

FINAL_JSON = "final.json"

AUTOSIMULATE = "autosimulate"
REFERENCE = "fixed"

RUN_COLUMNS = ("run", "seed", "searcher", "estimator", "images", "seconds", "best_val_metric", "images_to_best",
               "seconds_to_best", "final_val_metric", "test_metric", "fresh_metric")
STAT_KEYS = ("best_val_metric", "test_metric", "images", "seconds", "images_to_best", "seconds_to_best",
             "images_to_threshold", "seconds_to_threshold", "gap_closed_val", "gap_closed_test", "fresh_metric",
             "fresh_val_metric", "fresh_test_metric", "fresh_retrain_std", "gap_closed_fresh")


@dataclass
class RunRecord:
    """One finished run folder, read back."""

    method: str
    seed_index: int
    run_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    """``final/final.json`` (``autosim train --snapshots``) where the run has one."""

    @classmethod
    def load(cls, method: str, seed_index: int, run_dir: str | Path) -> RunRecord:
        run_dir = Path(run_dir)
        final_path = run_dir / FINAL / FINAL_JSON
        final = json.loads(final_path.read_text()) if final_path.exists() else None
        return cls(method, seed_index, run_dir, json.loads((run_dir / CONFIG_JSON).read_text()),
                   json.loads((run_dir / SUMMARY).read_text()), read_rows(run_dir / HISTORY), final)

    @property
    def quality_curve(self) -> list[dict[str, Any]]:
        """The psi-quality curve: per psi handed over (snapshots, then the final one), the search's
        images and seconds so far and the fresh-model metric (mean over its seeds)."""
        if self.final is None:
            return []
        return [{"at": p.get("at"), "images": p["images"], "seconds": p["seconds"], "metric": fresh_metric(p)}
                for p in self.final["points"] if "images" in p]

    @property
    def fresh(self) -> float | None:
        """The fresh-model metric of the final psi (test, else validation; mean over its seeds)."""
        curve = self.quality_curve
        return curve[-1]["metric"] if curve else None

    def fresh_reaches(self, threshold: float) -> Mapping[str, Any] | None:
        """The first psi of the quality curve whose fresh-model metric is at least ``threshold``."""
        return next((p for p in self.quality_curve if p["metric"] is not None and p["metric"] >= threshold), None)

    @property
    def searcher(self) -> str:
        return str(self.config["searcher"]["name"])

    @property
    def estimator(self) -> str | None:
        return (self.config.get("estimator") or {}).get("name")

    @property
    def evaluated(self) -> list[dict[str, Any]]:
        """History rows that carry a validation metric, in order."""
        return [r for r in self.history if r.get("val_metric") is not None]

    @property
    def best(self) -> dict[str, Any]:
        best = self.summary.get("best") or {}
        if best.get("val_metric") is not None:
            return best
        # A summary without ``best`` (no validation set, or an older run) falls back on its rows.
        rows = self.evaluated
        if not rows:
            return {}
        top = max(r["val_metric"] for r in rows)
        return next(r for r in rows if r["val_metric"] == top)

    @property
    def best_val(self) -> float | None:
        return self.best.get("val_metric")

    @property
    def test_metric(self) -> float | None:
        return (self.summary.get("test") or {}).get("metric")

    def reaches(self, threshold: float) -> Mapping[str, Any] | None:
        """The first history row whose validation metric is at least ``threshold``."""
        return first_reaching(self.history, threshold)


def first_reaching(history: Sequence[Mapping[str, Any]], threshold: float) -> Mapping[str, Any] | None:
    for row in history:
        metric = row.get("val_metric")
        if metric is not None and metric >= threshold:
            return row
    return None


def fresh_metric(point: Mapping[str, Any]) -> float | None:
    """A point of ``final.json``: its mean fresh-model test metric, else its mean validation metric."""
    test = (point.get("test_metric") or {}).get("mean")
    return test if test is not None else (point.get("val_metric") or {}).get("mean")


def stats(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1) of the values that exist; ``n`` counts them."""
    present = [float(v) for v in values if v is not None]
    mean = statistics.fmean(present) if present else None
    std = statistics.stdev(present) if len(present) >= 2 else None
    return {"mean": mean, "std": std, "n": len(present)}


# ------------------------------------------------------------------------- run configs ---
_TABLE = re.compile(r"^\s*\[")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def seeded_config_text(text: str, seed: int, budget: Mapping[str, Any] | None = None) -> str:
    """The config file as given, with its top-level ``seed`` and (when given) its ``[budget]`` table
    replaced, so that a run folder's ``config.toml`` reruns exactly that run.

    Comments and layout are kept. Where the file spells these keys in a way a line edit cannot
    follow (a dotted or inline budget), the text is returned unchanged below a comment that names
    the values; ``config.json`` always holds them.
    """
    original = tomllib.loads(text)
    if original.get("seed", 0) == seed and budget is None:
        return text
    lines = text.splitlines(keepends=True)
    first_table = next((n for n, line in enumerate(lines) if _TABLE.match(line)), len(lines))
    seed_line = next((n for n in range(first_table) if (m := _KEY.match(lines[n])) and m.group(1) == "seed"), None)
    if seed_line is not None:
        lines[seed_line] = f"seed = {seed}\n"
    else:
        lines.insert(0, f"seed = {seed}\n")
    if budget is not None:
        header = next((n for n, line in enumerate(lines) if line.strip() == "[budget]"), None)
        if header is not None:
            end = next((n for n in range(header + 1, len(lines)) if _TABLE.match(lines[n])), len(lines))
            kept = [line for line in lines[header + 1:end] if not _KEY.match(line)]
            values = [f"{key} = {value!r}\n" for key, value in budget.items()]
            lines[header + 1:end] = values + kept
    edited = "".join(lines)
    expected = {**original, "seed": seed, **({"budget": dict(budget)} if budget is not None else {})}
    try:
        if tomllib.loads(edited) == expected:
            return edited
    except tomllib.TOMLDecodeError:
        pass
    changes = f"seed = {seed}" + (f", budget = {dict(budget)}" if budget is not None else "")
    return f"# autosim compare ran this config with {changes} (see config.json)\n{text}"


# ----------------------------------------------------------------------------------- roles ---
def _is_oracle(config: Mapping[str, Any]) -> bool:
    """A ``fixed`` run whose training distribution is the validation set's own preset."""
    validation = config.get("validation")
    if config["searcher"]["name"] != REFERENCE or not validation or validation.get("source") != "simulator":
        return False
    simulator = config["simulator"]
    return (simulator.get("start") == validation.get("preset")
            and _distribution(simulator.get("overrides")) == _distribution(validation.get("overrides")))


def _distribution(overrides: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Overrides less ``learn``: whether psi is optimised does not change what is sampled."""
    kept = {name: {k: v for k, v in change.items() if k != "learn"} for name, change in (overrides or {}).items()}
    return {name: change for name, change in kept.items() if change}


def method_role(config: Mapping[str, Any]) -> str:
    """``oracle``, ``reference`` (any other fixed run), ``baseline`` (a black-box searcher) or ``method``.

    The comparison then marks the reference it measures the gap from as ``initial``."""
    searcher = config["searcher"]["name"]
    if searcher == REFERENCE:
        return "oracle" if _is_oracle(config) else "reference"
    return "method" if searcher == AUTOSIMULATE else "baseline"


@dataclass
class References:
    oracle: str | None
    initial: str | None
    notes: list[str]


def start_of(config: Mapping[str, Any]) -> str:
    """Where a run's psi starts: its simulator's ``start`` and the overrides that change what is sampled."""
    simulator = config["simulator"]
    return json.dumps([simulator.get("start"), _distribution(simulator.get("overrides"))], sort_keys=True)


def detect_references(roles: Mapping[str, str], *, oracle: str | None = None,
                      initial: str | None = None, starts: Mapping[str, str] | None = None) -> References:
    """The oracle and initial references of the gap closed; explicit names win over detection.

    Of several fixed references, the initial one is that which starts where the searching methods
    start (``starts``: method -> ``start_of`` its config); the others (a broad randomisation,
    say) stay references beside it."""
    notes: list[str] = []
    for flag, name in (("oracle", oracle), ("initial", initial)):
        if name is not None and name not in roles:
            raise ValueError(f"--{flag} {name!r}: no such method; methods: {', '.join(roles)}")
    if oracle is not None and oracle == initial:
        raise ValueError(f"--oracle and --initial name the same method {oracle!r}")

    def pick(role: str, given: str | None, flag: str) -> str | None:
        if given is not None:
            return given
        candidates = [m for m, r in roles.items() if r == role and m not in (oracle, initial)]
        if role == "reference" and len(candidates) > 1 and starts:
            searching = {starts[m] for m, r in roles.items() if r in ("method", "baseline")}
            same = [m for m in candidates if starts[m] in searching]
            if len(searching) == 1 and len(same) == 1:
                return same[0]
        if len(candidates) > 1:
            notes.append(f"several {flag} candidates ({', '.join(candidates)}); pass --{flag} to choose one")
        return candidates[0] if len(candidates) == 1 else None

    found_oracle = pick("oracle", oracle, "oracle")
    found_initial = pick("reference", initial, "initial")
    if found_oracle is None and not notes:
        notes.append("no oracle (a 'fixed' run whose simulator.start is the validation preset), "
                     "so no gap closed is reported")
    elif found_initial is None and not notes:
        notes.append("no initial reference (a 'fixed' run starting elsewhere than the validation preset), "
                     "so no gap closed is reported")
    return References(found_oracle, found_initial, notes)


# ------------------------------------------------------------------------------ threshold ---
@dataclass
class Threshold:
    method: str | None
    rule: str
    per_seed: dict[int, float]


def choose_threshold(records: Mapping[str, Mapping[int, RunRecord]], roles: Mapping[str, str],
                     threshold_from: str | None = None, fresh: bool = False) -> Threshold:
    """Per seed index, the score of one method: the one named, else the strongest baseline, else the
    strongest method that is not the oracle (by the mean score). The score is the best validation
    metric or, with ``fresh``, the fresh-model metric of the final psi."""
    def score(record: RunRecord) -> float | None:
        return record.fresh if fresh else record.best_val

    if threshold_from is not None:
        if threshold_from not in records:
            raise ValueError(f"--threshold-from {threshold_from!r}: no such method; methods: {', '.join(records)}")
        method, rule = threshold_from, "named by --threshold-from"
    else:
        def mean_best(m: str) -> float:
            value = stats([score(r) for r in records[m].values()])["mean"]
            return -math.inf if value is None else value

        baselines = [m for m in records if roles[m] == "baseline" and mean_best(m) > -math.inf]
        # The oracle trains on the validation distribution itself: a ceiling, not a level to reach.
        others = [m for m in records if roles[m] != "oracle" and mean_best(m) > -math.inf]
        if baselines:
            method, rule = max(baselines, key=mean_best), "strongest baseline"
        elif others:
            method, rule = max(others, key=mean_best), "strongest method (no baseline in the comparison)"
        else:
            return Threshold(None, "no method has a validation metric", {})
    per_seed = {i: value for i, r in records[method].items() if (value := score(r)) is not None}
    return Threshold(method, rule, per_seed)


# ---------------------------------------------------------------------------- the summary ---
def _gap(value: float | None, low: float | None, high: float | None) -> float | None:
    # An oracle no better than the initial reference leaves no gap to close.
    if value is None or low is None or high is None or high <= low:
        return None
    return (value - low) / (high - low)


def run_row(record: RunRecord, threshold: float | None, initial: RunRecord | None,
            oracle: RunRecord | None, fresh: bool = False) -> dict[str, Any]:
    best = record.best
    reached = None if threshold is None else record.fresh_reaches(threshold) if fresh else record.reaches(threshold)
    final = record.final["final"] if record.final is not None else {}
    return {
        "run": record.method, "seed_index": record.seed_index, "seed": record.config.get("seed"),
        "folder": str(record.run_dir), "searcher": record.searcher, "estimator": record.estimator,
        "images": record.summary["images"], "seconds": record.summary["seconds"],
        "best_val_metric": best.get("val_metric"), "images_to_best": best.get("images"),
        "seconds_to_best": best.get("seconds"),
        "final_val_metric": (record.summary.get("val") or {}).get("metric"),
        "test_metric": record.test_metric,
        "threshold": threshold,
        "threshold_reached": None if threshold is None else reached is not None,
        "images_to_threshold": None if reached is None else reached["images"],
        "seconds_to_threshold": None if reached is None else reached["seconds"],
        "gap_closed_val": _gap(record.best_val, initial.best_val if initial else None,
                               oracle.best_val if oracle else None),
        "gap_closed_test": _gap(record.test_metric, initial.test_metric if initial else None,
                                oracle.test_metric if oracle else None),
        "fresh_metric": record.fresh,
        "fresh_val_metric": (final.get("val_metric") or {}).get("mean"),
        "fresh_test_metric": (final.get("test_metric") or {}).get("mean"),
        "fresh_retrain_std": ((final.get("test_metric") or final.get("val_metric") or {}).get("std")),
        "gap_closed_fresh": _gap(record.fresh, initial.fresh if initial else None, oracle.fresh if oracle else None),
        "quality_curve": record.quality_curve,
        "psi": record.summary.get("psi"),
    }


def load_records(runs: Mapping[str, Mapping[int, str | Path]]) -> dict[str, dict[int, RunRecord]]:
    return {method: {i: RunRecord.load(method, i, d) for i, d in sorted(seeds.items())}
            for method, seeds in runs.items()}


def summarize(records: Mapping[str, Mapping[int, RunRecord]], *, threshold_from: str | None = None,
              oracle: str | None = None, initial: str | None = None,
              real_reference: Mapping[int, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """What ``comparison.json`` holds: per method the statistics over seeds, and every run's row.

    Where the runs have fresh models (``final.json``), the fresh-model metric of each run's final psi
    is the headline score: the threshold is the strongest baseline's, and the images and seconds to
    it are read from the psi-quality curves. ``real_reference`` (seed index -> ``final.json`` of
    models trained on the validation set itself) is the reference a small real set gives."""
    roles = {m: method_role(next(iter(seeds.values())).config) for m, seeds in records.items()}
    starts = {m: start_of(next(iter(seeds.values())).config) for m, seeds in records.items()}
    refs = detect_references(roles, oracle=oracle, initial=initial, starts=starts)
    fresh = any(r.final is not None for seeds in records.values() for r in seeds.values())
    if refs.oracle is not None:
        roles[refs.oracle] = "oracle"
    if refs.initial is not None:
        roles[refs.initial] = "initial"
    threshold = choose_threshold(records, roles, threshold_from, fresh)

    rows: list[dict[str, Any]] = []
    methods: list[dict[str, Any]] = []
    for method, seeds in records.items():
        method_rows = []
        for i, record in seeds.items():
            method_rows.append(run_row(
                record, threshold.per_seed.get(i),
                records[refs.initial].get(i) if refs.initial else None,
                records[refs.oracle].get(i) if refs.oracle else None, fresh))
        rows += method_rows
        first = next(iter(seeds.values()))
        entry: dict[str, Any] = {"method": method, "role": roles[method], "searcher": first.searcher,
                                 "estimator": first.estimator, "seeds": len(method_rows)}
        for key in STAT_KEYS:
            entry[key] = stats([r[key] for r in method_rows])
        with_threshold = [r for r in method_rows if r["threshold"] is not None]
        entry["threshold_reached"] = {"reached": sum(bool(r["threshold_reached"]) for r in with_threshold),
                                      "of": len(with_threshold)}
        methods.append(entry)

    real = None
    if real_reference:
        values = [fresh_metric(report["final"]) for report in real_reference.values()]
        learned = [e["fresh_metric"]["mean"] for e in methods if e["role"] in ("method", "baseline")
                   and e["fresh_metric"]["mean"] is not None]
        real = {"per_seed": {str(i): fresh_metric(r["final"]) for i, r in real_reference.items()},
                "metric": stats(values), "learned_means": learned,
                "beats_every_method": bool(learned) and all(stats(values)["mean"] > v for v in learned)}
    return {
        "seeds": max((len(s) for s in records.values()), default=0),
        "score": "fresh" if fresh else "in-loop",
        "real_reference": real,
        "threshold": {"method": threshold.method, "rule": threshold.rule,
                      "per_seed": {str(i): v for i, v in threshold.per_seed.items()},
                      "mean": stats(list(threshold.per_seed.values()))["mean"]},
        "references": {"oracle": refs.oracle, "initial": refs.initial,
                       "explicit": {"oracle": oracle is not None, "initial": initial is not None}},
        "notes": refs.notes,
        "methods": methods,
        "runs": rows,
    }


# ---------------------------------------------------------------------------- markdown ---
def _number(value: float, kind: str) -> str:
    if kind == "metric":
        return f"{value:.4f}"
    if kind == "share":
        return f"{100 * value:.0f}"
    return f"{value:.0f}" if kind == "images" else f"{value:.1f}"


def _stat_cell(stat: Mapping[str, Any], kind: str) -> str:
    if stat["mean"] is None:
        return "–"
    text = _number(stat["mean"], kind)
    if stat["std"] is not None:
        text += f" ± {_number(stat['std'], kind)}"
    return text


def _threshold_cell(entry: Mapping[str, Any], key: str, kind: str) -> str:
    count = entry["threshold_reached"]
    if count["of"] == 0:
        return "–"
    if count["reached"] == 0:
        return f"not reached (0/{count['of']})"
    return f"{_stat_cell(entry[key], kind)} ({count['reached']}/{count['of']})"


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if "metric" in column else f"{value:.1f}"
    return str(value)


def _per_seed(values: Mapping[str, float]) -> str:
    return ", ".join(f"seed {i}: {v:.4f}" for i, v in values.items())


def _curve_cell(rows: Sequence[Mapping[str, Any]]) -> str:
    """The psi-quality curve of a method: the mean fresh-model metric at each fraction of the budget."""
    by_at: dict[Any, list[float]] = {}
    for row in rows:
        for point in row["quality_curve"]:
            if point["metric"] is not None:
                by_at.setdefault(point["at"], []).append(point["metric"])
    if not by_at:
        return "–"
    return " → ".join(f"{statistics.fmean(v):.3f}" for _, v in sorted(by_at.items(), key=lambda kv: kv[0] or 0))


def markdown(comparison: Mapping[str, Any]) -> str:
    n = comparison["seeds"]
    threshold = comparison["threshold"]
    refs = comparison["references"]
    fresh = comparison.get("score") == "fresh"
    gap = refs["oracle"] is not None and refs["initial"] is not None
    thr = f"threshold ({threshold['method']})" if threshold["method"] else "threshold"
    if fresh:
        header = ["method", "role", "searcher", "estimator", "seeds", "fresh-model metric", "in-loop best val metric",
                  "images", "seconds", f"images to {thr}", f"seconds to {thr}"]
        if gap:
            header += ["gap closed, fresh (%)"]
        header += ["psi-quality curve"]
    else:
        header = ["method", "role", "searcher", "estimator", "seeds", "best val metric", "test metric", "images",
                  "seconds", "images to best", "seconds to best", f"images to {thr}", f"seconds to {thr}"]
        if gap:
            header += ["gap closed, val (%)", "gap closed, test (%)"]
    lines = [f"## Methods over seeds (mean ± std over {n} seed{'s' if n != 1 else ''})", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in comparison["methods"]:
        cells = [e["method"], e["role"], e["searcher"], e["estimator"] or "–", str(e["seeds"])]
        if fresh:
            rows = [r for r in comparison["runs"] if r["run"] == e["method"]]
            cells += [_stat_cell(e["fresh_metric"], "metric"), _stat_cell(e["best_val_metric"], "metric"),
                      _stat_cell(e["images"], "images"), _stat_cell(e["seconds"], "seconds"),
                      _threshold_cell(e, "images_to_threshold", "images"),
                      _threshold_cell(e, "seconds_to_threshold", "seconds")]
            if gap:
                cells += [_stat_cell(e["gap_closed_fresh"], "share")]
            cells += [_curve_cell(rows)]
        else:
            cells += [_stat_cell(e["best_val_metric"], "metric"), _stat_cell(e["test_metric"], "metric"),
                      _stat_cell(e["images"], "images"), _stat_cell(e["seconds"], "seconds"),
                      _stat_cell(e["images_to_best"], "images"), _stat_cell(e["seconds_to_best"], "seconds"),
                      _threshold_cell(e, "images_to_threshold", "images"),
                      _threshold_cell(e, "seconds_to_threshold", "seconds")]
            if gap:
                cells += [_stat_cell(e["gap_closed_val"], "share"), _stat_cell(e["gap_closed_test"], "share")]
        lines.append("| " + " | ".join(cells) + " |")
    real = comparison.get("real_reference")
    if real is not None:
        row = ["trained on the validation set", "real-data reference", "–", "–", str(real["metric"]["n"]),
               _stat_cell(real["metric"], "metric")] + ["–"] * (len(header) - 6)
        lines.append("| " + " | ".join(row) + " |")
    notes: list[str] = []
    if fresh:
        notes.append("Fresh-model metric: a model trained from scratch on renders of the psi each run hands over "
                     "(AutoSimulate: its final psi; a black-box searcher: its best point; fixed: its psi), with one "
                     "recipe for every method (`autosim train`), scored on the test set (validation where there is "
                     "none); mean over its fresh seeds, then mean ± std over the runs' seeds. The in-loop best val "
                     "metric is that of the run's own models (warm-started or per-evaluation), kept for reference.")
    if threshold["method"]:
        if fresh:
            notes.append(f"Threshold: the fresh-model metric of `{threshold['method']}` ({threshold['rule']}) per "
                         f"seed — {_per_seed(threshold['per_seed'])}. Images and seconds to reach it are those of "
                         "the first psi of the psi-quality curve (the psi handed over at the fractions "
                         "`final_training.at` of the budget) whose fresh-model metric is at least the threshold of "
                         "its seed; means are over the seeds that reached it (k/N), a run that never does counts as "
                         "not reached.")
        else:
            notes.append(f"Threshold: the best validation metric of `{threshold['method']}` ({threshold['rule']}) "
                         f"per seed — {_per_seed(threshold['per_seed'])}. Images and seconds to reach it are those "
                         "of the first evaluation whose validation metric is at least the threshold of its seed; "
                         "means are over the seeds that reached it (k/N), a run that never does counts as "
                         "not reached.")
    else:
        notes.append(f"Threshold: none ({threshold['rule']}).")
    if gap and fresh:
        notes.append(f"Gap closed: (fresh-model metric − that of `{refs['initial']}`) / (that of `{refs['oracle']}` "
                     f"− that of `{refs['initial']}`) per seed, `{refs['oracle']}` being the oracle (the validation "
                     "distribution) and the other the fixed starting psi.")
    elif gap:
        notes.append(f"Gap closed: (best val − best val of `{refs['initial']}`) / (best val of `{refs['oracle']}` "
                     f"− best val of `{refs['initial']}`) per seed, `{refs['oracle']}` being the oracle (trained "
                     "on the validation distribution) and the other the fixed starting ψ; the test column "
                     "does the same with test metrics.")
    if real is not None:
        verdict = ("beats every method's learned distribution" if real["beats_every_method"] else
                   "does not beat every method's learned distribution")
        notes.append("Real-data reference: the task's model trained on the validation images alone with the same "
                     f"recipe, scored on test: {_stat_cell(real['metric'], 'metric')}; it {verdict}.")
    notes += [f"Note: {note}." for note in comparison["notes"]]
    notes.append("± is the sample standard deviation over seeds (n − 1); none is shown for a single value. "
                 "Images and seconds are totals over a run unless they say *to*.")
    # Blank lines between the notes: markdown would run them into one paragraph.
    for note in notes:
        lines += ["", note]
    lines += ["", "## Runs", "", "| " + " | ".join(RUN_COLUMNS) + " |", "|" + "---|" * len(RUN_COLUMNS)]
    for row in comparison["runs"]:
        cells = {**row, "seed": row["seed_index"]}
        lines.append("| " + " | ".join(_cell(c, cells[c]) for c in RUN_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(runs: Mapping[str, Mapping[int, str | Path]], out_dir: Path, *,
                     threshold_from: str | None = None, oracle: str | None = None,
                     initial: str | None = None, real_reference: Mapping[int, str | Path] | None = None
                     ) -> dict[str, Any]:
    """``comparison.json``, ``comparison.md`` and ``comparison.png`` from run folders
    (method -> seed index -> folder), and ``psi-quality.png`` where they have fresh models;
    ``real_reference``: seed index -> folder of ``autosim train --on validation``. Returns what
    ``comparison.json`` holds."""
    records = load_records(runs)
    real = {i: json.loads((Path(folder) / FINAL_JSON).read_text()) for i, folder in (real_reference or {}).items()}
    comparison = summarize(records, threshold_from=threshold_from, oracle=oracle, initial=initial,
                           real_reference=real or None)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(comparison, indent=2, default=float) + "\n"
    atomic_write(out_dir / "comparison.json", lambda f: f.write(text.encode()))
    table = markdown(comparison)
    atomic_write(out_dir / "comparison.md", lambda f: f.write(table.encode()))
    threshold = comparison["threshold"]
    label = f"threshold: best of {threshold['method']} (mean over seeds)" if threshold["method"] else ""
    plot_comparison(records, out_dir / "comparison.png", None if comparison["score"] == "fresh" else threshold["mean"],
                    label)
    if comparison["score"] == "fresh":
        plot_quality(records, out_dir / "psi-quality.png")
    return comparison
