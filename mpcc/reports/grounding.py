"""The step-level grounding section (`--diagnostics evidence,crm`) of a run's report and of a comparison:
its tables and charts, rendered from the `grounding` section of metrics.json (measures defined in the
README, "Step-level grounding")."""

from __future__ import annotations

from pathlib import Path

from mpcc.reports.charts import evidence_chart, risk_coverage_chart
from mpcc.reports.tables import MISSING, estimate, fmt, markdown_table

EVIDENCE_CHART, RISK_CHART = "grounding.png", "risk_coverage.png"
EVIDENCE_COLUMNS = (
    "image_mass", "evidence_mass", "evidence_share", "target_mass", "early", "late", "collapse_ratio",
    "entropy_full",
)  # fmt: skip
CRM_MEASURES = {  # key in a CRM arm: its name in the tables
    "answer_change": "answer changed",
    "robust": "robust",
    "hallucinated": "hallucinated evidence",
    "collapsed": "reasoning collapsed",
    "flipped": "answer flipped",
    "format_break": "format broken",
    "step_similarity": "step similarity",
    "delta": "mean delta",
}
CRM_CLASSES = ("robust", "hallucinated", "collapsed", "flipped")
COMPARED = {  # column: where it sits in a run's grounding section
    "evidence mass": ("evidence", "all", "evidence_mass"),
    "collapse ratio": ("evidence", "all", "collapse_ratio"),
    "AURC (full-response entropy)": ("uncertainty", "aurc", "entropy_full"),
    "risk at coverage, veto": ("uncertainty", "risk_at_coverage", "with_veto"),
}
_LABELS = {
    "entropy_full": "full-response entropy",
    "entropy_answer": "answer-span entropy",
    "interaction": "entropy x vision model",
}


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


def _evidence_markdown(e: dict, u: dict) -> list[str]:
    rows = [
        (level, c["n"], *(fmt(c[k], ".4f") for k in EVIDENCE_COLUMNS))
        for level, c in {"all": e["all"], **e["per_level"]}.items()
    ]
    risk = u["risk_at_coverage"]
    vetoed = MISSING if risk["vetoed"] is None else risk["vetoed"]
    lines = [
        "Attention of each reasoning token (mean over heads and measured layers) on the image, on the "
        "context objects (evidence) and on the hidden region; collapse ratio = late / early evidence mass.",
        "",
        *markdown_table(("level", "answers", *map(_label, EVIDENCE_COLUMNS)), rows),
        f"![evidence attention by reasoning position]({EVIDENCE_CHART})",
        "",
        *markdown_table(
            ("ranking (most confident first)", "AURC"), [(_label(k), fmt(v)) for k, v in u["aurc"].items()]
        ),
        f"Selective risk at {risk['coverage']:.0%} coverage ranked by full-response entropy: "
        f"{fmt(risk['entropy_full'])} ({u['n']} answers). Vision veto (abstain when confident but visually "
        f"disengaged; fitted on {u['n_fit']} answers, evaluated on {u['n_eval']}): "
        f"{fmt(risk['without_veto'])} without, {fmt(risk['with_veto'])} with ({vetoed} vetoed).",
        "",
    ]
    if u["interaction"]:
        i = u["interaction"]
        lines += [
            "Entropy x vision model, P(wrong) = sigmoid(b0 + b1 H + b2 V + b3 H V) on standardised features: "
            f"b0 {fmt(i['intercept'])}, b1 {fmt(i['entropy'])}, b2 {fmt(i['vision'])}, "
            f"b3 {fmt(i['interaction'])}; held-out log loss {fmt(i['heldout_log_loss'])}; AURC on the "
            f"evaluation half {fmt(u['aurc']['interaction'])} (full-response entropy on the same answers: "
            f"{fmt(i['aurc_entropy_full_eval_half'])}).",
            "",
        ]
    return lines + [f"![risk-coverage]({RISK_CHART})", ""]


def _crm_markdown(c: dict) -> list[str]:
    a = c["all"]
    rows = [
        (name, *(estimate(a[arm][key]) for arm in ("evidence", "control", "contrast")))
        for key, name in CRM_MEASURES.items()
    ]
    threshold = MISSING if a["collapse_threshold"] is None else f"{a['collapse_threshold']:.3f}"
    overlap = MISSING if a["control_overlap"] is None else f"{a['control_overlap']:.1%}"
    change = a["pixel_change"]
    levels = [
        (
            level, cell["answers"], cell["pairs"], *(estimate(d, ".4f") for d in cell["mean_delta"].values()),
            *(estimate(cell["contrast"][k]) for k in ("answer_change", *CRM_CLASSES)),
        )
        for level, cell in {"all": a, **c["per_level"]}.items()
    ]  # fmt: skip
    positions = ", ".join(f"{p:.1f}: {fmt(d, '.4f')}" for p, d in zip(c["bins"], a["delta_by_position"]))
    contrasts = [f"{CRM_MEASURES[k]} (evidence − control)" for k in ("answer_change", *CRM_CLASSES)]
    return [
        "Contrastive region masking: context objects hidden one at a time, and the most predictive together "
        "(evidence ablation); each set's control hides regions of the same shape and area away from every "
        "object, in a flat colour that changes the image as much (mean absolute change of the RGB values: "
        f"evidence {fmt(change['evidence'], '.2f')}, control {fmt(change['control'], '.2f')}; share of "
        f"control pixels that could not avoid the target or an object: {overlap}). delta = change "
        "of a step's mean token log-probability (negative: the step leaned on what was hidden). Classes of "
        "the regenerated reasoning: reasoning collapsed = step similarity below the control's 5th "
        f"percentile ({threshold}); then hallucinated evidence (names a category no longer visible; on the "
        "control: names those same, visible, categories); then answer flipped; else robust. Rates over "
        f"(answer, set) pairs with 95% item-bootstrap intervals, {a['answers']} answers, {a['pairs']} pairs; "
        "the headline is evidence − control.",
        "",
        *markdown_table(("measure", "evidence ablation", "control ablation", "evidence − control"), rows),
        *markdown_table(
            ("level", "answers", "pairs", "delta (one object)", "delta (top-k)", *contrasts), levels
        ),
        f"Mean delta of the evidence ablation by step position (point means): {positions}.",
        "",
    ]


def grounding_markdown(section: dict) -> str:
    """The section's tables for report.md, opening with a blank line to follow the report's last table."""
    lines = ["", "## Step-level grounding", ""]
    if "evidence" in section:
        lines += _evidence_markdown(section["evidence"], section["uncertainty"])
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
    crm = {name: _at(s, ("crm", "all")) for name, s in sections.items()}
    lines += _crm_compare({name: c for name, c in crm.items() if c and "contrast" in c})
    curves = {
        name: (s["evidence"]["bins"], s["evidence"]["all"]["curve"])
        for name, s in sections.items()
        if "evidence" in s
    }
    if curves:
        evidence_chart(curves, out / EVIDENCE_CHART)
        lines.append(f"![evidence attention by reasoning position]({EVIDENCE_CHART})")
    return lines


def _crm_compare(cells: dict[str, dict]) -> list[str]:
    """The runs' CRM classes on the evidence ablation and their contrasts with the control ablation (runs
    of an mpcc without the control left out)."""
    if not cells:
        return []
    keys = ("answer_change", *CRM_CLASSES)
    evidence = [
        (name, c["answers"], *(estimate(c["evidence"][k]) for k in keys)) for name, c in cells.items()
    ]
    contrast = [
        (name, c["answers"], *(estimate(c["contrast"][k]) for k in keys)) for name, c in cells.items()
    ]
    return [
        "CRM, evidence ablation (95% item-bootstrap intervals):",
        "",
        *markdown_table(("run", "answers", *(f"CRM {CRM_MEASURES[k]}" for k in keys)), evidence),
        "CRM, evidence − control ablation:",
        "",
        *markdown_table(("run", "answers", *(CRM_MEASURES[k] for k in keys)), contrast),
    ]
