"""The learning-curves section of the demo's comparison: per GRPO run, how the generated samples' reward
moved between the first and the last logged steps (from `mpcc.training.curves.learning_summary`)."""

from __future__ import annotations

from mpcc.reports.tables import fmt, markdown_table

LEARNING_CHART = "learning_curves.png"  # charts.reward_curve_chart of the same runs


def learning_section(summary: dict, chart: str | None = None) -> list[str]:
    """Markdown lines: the table of `summary` ({"window", "runs": {name: means and log count}}), then the
    chart file's image line when `chart` names one."""
    window = summary["window"]
    header = (
        "run",
        f"reward, first {window} logs",
        f"reward, last {window} logs",
        "zero-variance groups",
        "logs",
    )
    rows = [
        (name, fmt(r["reward_first"]), fmt(r["reward_last"]), fmt(r["zero_variance_groups"]), r["logs"])
        for name, r in summary["runs"].items()
    ]
    lines = ["## Learning curves", "", *markdown_table(header, rows)]
    return lines + ([f"![learning curves]({chart})"] if chart else [])
