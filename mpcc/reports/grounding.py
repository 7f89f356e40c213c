"""The step-level grounding section (`--diagnostics evidence,crm`) of a run's report and of a comparison:
its tables and charts, rendered from the `grounding` section of metrics.json (measures defined in the
README, "Step-level grounding")."""

from __future__ import annotations

from pathlib import Path

from mpcc.reports.charts import evidence_chart, risk_coverage_chart
from mpcc.reports.monitor import compare_uncertainty, uncertainty_markdown
from mpcc.reports.tables import fmt, markdown_table

EVIDENCE_CHART, RISK_CHART = "grounding.png", "risk_coverage.png"
EVIDENCE_COLUMNS = (
    "image_mass", "evidence_mass", "evidence_share", "target_mass", "early", "late", "collapse_ratio",
    "entropy_full",
)  # fmt: skip
CRM_COLUMNS = ("answer_change_rate", "step_similarity", "hallucinated_evidence_rate", "collapse_rate")
COMPARED = {  # column: where it sits in a run's grounding section
    "evidence mass": ("evidence", "all", "evidence_mass"),
    "collapse ratio": ("evidence", "all", "collapse_ratio"),
    "CRM hallucinated evidence": ("crm", "all", "hallucinated_evidence_rate"),
    "CRM collapse": ("crm", "all", "collapse_rate"),
}
_LABELS = {"entropy_full": "full-response entropy", "entropy_answer": "answer-span entropy"}


def _label(key: str) -> str:
    return _LABELS.get(key, key.removesuffix("_rate").replace("_", " "))


def grounding_charts(section: dict, out: Path) -> None:
    """The section's PNG charts under `out` (EVIDENCE_CHART, RISK_CHART)."""
    if "evidence" in section:
        evidence = section["evidence"]
        curves = {"all": (evidence["bins"], evidence["all"]["curve"])}
        curves |= {lv: (evidence["bins"], cell["curve"]) for lv, cell in evidence["per_level"].items()}
        evidence_chart(curves, out / EVIDENCE_CHART)
        risk = {
            f"ranked by {_label(name)}": (curve["coverage"], curve["risk"])
            for name, curve in section["uncertainty"]["curves"].items()
            if curve
        }
        risk_coverage_chart(risk, out / RISK_CHART)


def _evidence_markdown(e: dict) -> list[str]:
    rows = [
        (level, c["n"], *(fmt(c[k], ".4f") for k in EVIDENCE_COLUMNS))
        for level, c in {"all": e["all"], **e["per_level"]}.items()
    ]
    return [
        "Attention of each reasoning token (mean over heads and measured layers) on the image, on the "
        "context objects (evidence) and on the hidden region; collapse ratio = late / early evidence mass.",
        "",
        *markdown_table(("level", "answers", *map(_label, EVIDENCE_COLUMNS)), rows),
        f"![evidence attention by reasoning position]({EVIDENCE_CHART})",
        "",
    ]


def _crm_markdown(c: dict) -> list[str]:
    rows = [
        (level, cell["answers"], cell["pairs"], *(fmt(d, ".4f") for d in cell["mean_delta"].values()))
        + tuple(fmt(cell[k]) for k in CRM_COLUMNS)
        for level, cell in {"all": c["all"], **c["per_level"]}.items()
    ]
    positions = ", ".join(
        f"{p:.1f}: {fmt(d, '.4f')}" for p, d in zip(c["bins"], c["all"]["delta_by_position"])
    )
    header = ("level", "answers", "pairs", "delta (one object)", "delta (top-k)")
    return [
        "Contrastive region masking: context objects hidden one at a time, and the most predictive together; "
        "delta = change of a step's mean token log-probability (negative: the step leaned on the region).",
        "",
        *markdown_table((*header, *map(_label, CRM_COLUMNS)), rows),
        f"Mean delta by step position: {positions}.",
        "",
    ]


def grounding_markdown(section: dict) -> str:
    """The section's tables for report.md, opening with a blank line to follow the report's last table."""
    lines = ["", "## Step-level grounding", ""]
    if "evidence" in section:
        lines += _evidence_markdown(section["evidence"]) + uncertainty_markdown(section["uncertainty"])
        lines += [f"![risk-coverage]({RISK_CHART})", ""]
    if "crm" in section:
        lines += _crm_markdown(section["crm"])
    return "\n".join(lines)


def _at(section: dict, path: tuple[str, ...]):
    for key in path:
        section = section.get(key) if isinstance(section, dict) else None
    return section


def compare_grounding(sections: dict[str, dict], out: Path) -> list[str]:
    """Markdown lines comparing runs' grounding sections (MISSING where a run lacks a measure), and one
    evidence curve per run drawn under `out`."""
    rows = [(name, *(fmt(_at(s, path), ".4f") for path in COMPARED.values())) for name, s in sections.items()]
    lines = ["## Step-level grounding", "", *markdown_table(("run", *COMPARED), rows)]
    monitored = {name: s["uncertainty"] for name, s in sections.items() if "uncertainty" in s}
    if monitored:
        lines += compare_uncertainty(monitored)
    curves = {
        name: (s["evidence"]["bins"], s["evidence"]["all"]["curve"])
        for name, s in sections.items()
        if "evidence" in s
    }
    if curves:
        evidence_chart(curves, out / EVIDENCE_CHART)
        lines.append(f"![evidence attention by reasoning position]({EVIDENCE_CHART})")
    return lines
