"""The report of one `mpcc eval` run: its metrics as markdown tables (report.md), the same as a page
(report.html) and its charts, rendered from the metrics dict alone so a report can be remade from
metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mpcc.data.difficulty import LEVELS
from mpcc.reports.charts import ACCURACY_CHART, accuracy_chart
from mpcc.reports.grounding import grounding_charts, grounding_markdown
from mpcc.reports.page import report_html
from mpcc.reports.tables import MISSING, accuracy_n, fmt, markdown_table

REPORT, REPORT_HTML = "report.md", "report.html"
_YESNO_LABELS = {
    "yes_on_answer": '"yes" when asked about the answer',
    "no_on_confusable": '"no" when asked about a confusable category',
    "no_on_irrelevant": '"no" when asked about an irrelevant category',
}
_SPLIT_LABELS = {"in": "in distribution", "out": "out of distribution (held-out categories)"}


def _overall(metrics: dict[str, Any]) -> list[tuple]:
    n = metrics["n"]
    rows = [
        ("accuracy", fmt(metrics["accuracy"]), n),
        ("format compliance", fmt(metrics["format_compliance"]), n),
    ]
    if "sampling" in metrics:
        s = metrics["sampling"]
        low, high = s["ci95"]
        rows.append(
            (
                f"mean accuracy over {s['samples']} samples [95% CI]",
                f"{fmt(s['mean'])} [{fmt(low)}, {fmt(high)}]",
                n,
            )
        )
        per_sample = [fmt(c["accuracy"]) for c in s["per_sample"]], [str(c["n"]) for c in s["per_sample"]]
        rows.append(("accuracy per sample", ", ".join(per_sample[0]), ", ".join(per_sample[1])))
    if "open" in metrics:
        o = metrics["open"]
        rows.append(("open: exact match", fmt(o["exact_match"]), o["n"]))
        if "levenshtein" in o:
            rows.append(("open: mean Levenshtein", fmt(o["levenshtein"]), o["n_levenshtein"]))
    return rows


def metrics_sections(metrics: dict[str, Any], depth: int = 2) -> list[str]:
    """The metrics as markdown lines: a count line, then one section of heading `depth` per breakdown
    (three decimals, counts beside every rate); the model card nests them one level deeper."""
    h, n = "#" * depth, metrics["n"]
    lines = [f"{n} records, {metrics['items']} items, {metrics['samples']} sample(s).", ""]
    lines += [f"{h} Overall", "", *markdown_table(("metric", "value", "n"), _overall(metrics))]
    formats = list(metrics["per_format"])
    grid = [
        [level, *(accuracy_n(cells.get(f)) for f in formats), accuracy_n(metrics["per_level"][level])]
        for level, cells in metrics["per_level_format"].items()
    ]
    everything = {"accuracy": metrics["accuracy"], "n": n}
    grid.append(["all", *(accuracy_n(metrics["per_format"][f]) for f in formats), accuracy_n(everything)])
    lines += [f"{h} Accuracy by level and format", "", *markdown_table(("level", *formats, "all"), grid)]
    by_format = [
        (f, fmt(c["accuracy"]), fmt(c["format_compliance"]), c["n"]) for f, c in metrics["per_format"].items()
    ]
    lines += [f"{h} By format", ""]
    lines += markdown_table(("format", "accuracy", "format compliance", "n"), by_format)
    split = [
        (_SPLIT_LABELS.get(k, k), fmt(c["accuracy"]), c["n"]) for k, c in metrics["distribution"].items()
    ]
    lines += [f"{h} In / out of distribution", "", *markdown_table(("split", "accuracy", "n"), split)]
    if metrics["yesno_rates"]:
        rates = [(_YESNO_LABELS[k], fmt(c["rate"]), c["n"]) for k, c in metrics["yesno_rates"].items()]
        lines += [f"{h} Yes/no answers", "", *markdown_table(("rate", "value", "n"), rates)]
    groups = [(k, fmt(c["accuracy"]), c["n"]) for k, c in metrics["per_supercategory"].items()]
    return lines + [f"{h} By supercategory", "", *markdown_table(("supercategory", "accuracy", "n"), groups)]


def markdown_report(metrics: dict[str, Any], title: str) -> str:
    """The metrics under a title, readable in a terminal or a pull request."""
    return "\n".join([f"# {title}", "", *metrics_sections(metrics)])


def _with_gap(accuracy: float, gap: float) -> str:
    return f"{fmt(accuracy)} ({fmt(gap, '+.3f')})"


def diagnostics_markdown(metrics: dict[str, Any]) -> str:
    """The visual-reliance section (accuracy per level under each image condition, and its gap to the
    normal condition); empty when the run had none."""
    diagnostics = metrics.get("diagnostics")
    if not diagnostics:
        return ""
    rows = [
        (
            condition,
            _with_gap(d["accuracy"], d["gap"]),
            *(
                _with_gap(d["per_level"][lv], d["gap_per_level"][lv]) if lv in d["per_level"] else MISSING
                for lv in LEVELS
            ),
        )
        for condition, d in diagnostics.items()
    ]
    lines = ["", "## Visual-reliance diagnostics (accuracy, gap to normal)", ""]
    return "\n".join(lines + markdown_table(("condition", "all", *LEVELS), rows))


def write_eval_report(metrics: dict[str, Any], out: Path, title: str, name: str) -> None:
    """report.md, report.html and the charts of one run under `out`; `name` labels the run in the
    chart and the page's title."""
    accuracy_chart({name: metrics}, out / ACCURACY_CHART)
    report = markdown_report(metrics, title) + diagnostics_markdown(metrics)
    if "grounding" in metrics:
        grounding_charts(metrics["grounding"], out)
        report += grounding_markdown(metrics["grounding"])
    report += f"\n![accuracy by level and format]({ACCURACY_CHART})\n"
    (out / REPORT).write_text(report, encoding="utf-8")
    (out / REPORT_HTML).write_text(report_html(report, f"mpcc eval: {name}"), encoding="utf-8")
