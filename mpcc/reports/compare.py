"""`mpcc eval compare`'s compare.md: several runs' metrics side by side (accuracy by format, by level and
format, step-level grounding when the runs measured it) with their charts."""

from __future__ import annotations

from pathlib import Path

from mpcc.data.difficulty import LEVELS
from mpcc.reports.charts import ACCURACY_CHART, accuracy_chart
from mpcc.reports.grounding import compare_grounding
from mpcc.reports.tables import accuracy, fmt, markdown_table

COMPARISON = "compare.md"


def _formats(runs: dict[str, dict]) -> list[str]:
    """Every format any run evaluated, in the order they first appear."""
    return list(dict.fromkeys(f for m in runs.values() for f in m["per_format"]))


def accuracy_by_format(runs: dict[str, dict]) -> list[str]:
    """The headline section: per run (label: metrics), accuracy per format and overall, format compliance."""
    formats = _formats(runs)
    rows = [
        (
            name,
            *(accuracy(m["per_format"].get(f)) for f in formats),
            fmt(m["accuracy"]),
            fmt(m["format_compliance"]),
            m["n"],
        )
        for name, m in runs.items()
    ]
    header = ("run", *formats, "all", "format compliance", "n")
    return ["## Accuracy by format", "", *markdown_table(header, rows)]


def accuracy_by_level(runs: dict[str, dict]) -> list[str]:
    """Per level, one row per run, so runs sit next to each other within a level."""
    formats = _formats(runs)
    rows = [
        (
            level,
            name,
            *(accuracy(m["per_level_format"].get(level, {}).get(f)) for f in formats),
            accuracy(m["per_level"].get(level)),
        )
        for level in LEVELS
        for name, m in runs.items()
    ]
    return ["## Accuracy by level and format", "", *markdown_table(("level", "run", *formats, "all"), rows)]


def write_comparison(runs: dict[str, dict], out: Path) -> Path:
    """compare.md and its charts under `out`, from each run's metrics by label (distinct labels)."""
    accuracy_chart(runs, out / ACCURACY_CHART)
    lines = [
        *accuracy_by_format(runs),
        *accuracy_by_level(runs),
        f"![accuracy by level and format]({ACCURACY_CHART})",
    ]
    grounded = {name: m["grounding"] for name, m in runs.items() if "grounding" in m}
    if grounded:
        lines += ["", *compare_grounding(grounded, out)]
    (out / COMPARISON).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out / COMPARISON
