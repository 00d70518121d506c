"""docs/results.md quotes its Table 2 from docs/results/table2.json: every row of the page's tables is
what the committed JSON gives, so the figures can be checked against the runs behind them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results.md"
TABLE2 = ROOT / "docs" / "results" / "table2.json"


def table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("|---")]


def test_the_table2_tables_are_those_of_the_committed_json() -> None:
    from autosim_core.compare import markdown

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import table2
    finally:
        sys.path.pop(0)
    report = json.loads(TABLE2.read_text())
    page = RESULTS.read_text()
    methods_table = markdown(report["comparison"]).split("\n\n## Runs")[0]
    expected = table_rows(methods_table) + table_rows(table2.ratio_table(report["ratios"]))
    missing = [row for row in expected if row not in page]
    assert not missing, f"docs/results.md lacks these rows of {TABLE2.name}: {missing}"
    assert report["comparison"]["score"] == "fresh" and report["seeds"] >= 3
    assert f"{report['reward_ranking']['spearman']:.2f}" in page


def test_the_nuclei_table_is_that_of_the_committed_json() -> None:
    report = json.loads((ROOT / "docs" / "results" / "nuclei.json").read_text())
    page = RESULTS.read_text()
    methods = {e["method"]: e["fresh_metric"] for e in report["comparison"]["methods"]}
    real = report["comparison"]["real_reference"]["metric"]
    for stat in [*methods.values(), real]:
        assert f"{stat['mean']:.4f} ± {stat['std']:.4f}" in page, stat
    for method, f1 in report["object_f1"].items():
        assert f"{f1['mean']:.3f} ± {f1['std']:.3f}" in page, method
    assert report["seeds"] >= 3 and report["comparison"]["score"] == "fresh" and not report["smoke"]
