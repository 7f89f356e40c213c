"""The step-level grounding section (`--diagnostics evidence,crm`) of a run's report and of a comparison:
its tables and charts, rendered from the `grounding` section of metrics.json (measures defined in the
README, "Step-level grounding")."""

from __future__ import annotations

from pathlib import Path

from mpcc.reports.charts import evidence_chart, profile_chart, risk_coverage_chart
from mpcc.reports.monitor import compare_uncertainty, uncertainty_markdown
from mpcc.reports.tables import MISSING, estimate, fmt, markdown_table

EVIDENCE_CHART, RISK_CHART, PROFILE_CHART = "grounding.png", "risk_coverage.png", "grounding_profile.png"
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
    "evidence share": ("evidence", "all", "evidence_share"),
    "collapse ratio": ("evidence", "all", "collapse_ratio"),
    "collapse ratio (raw mass)": ("evidence", "all", "collapse_ratio_raw"),
}
_LABELS = {"entropy_full": "full-response entropy", "entropy_answer": "answer-span entropy"}


def _label(key: str) -> str:
    return _LABELS.get(key, key.removesuffix("_rate").replace("_", " "))


def grounding_charts(section: dict, out: Path) -> None:
    """The section's PNG charts under `out` (EVIDENCE_CHART, PROFILE_CHART, RISK_CHART)."""
    if "evidence" in section:
        _evidence_charts(section["evidence"], out)
        risk = {
            f"ranked by {_label(name)}": (curve["coverage"], curve["risk"])
            for name, curve in section["uncertainty"]["curves"].items()
            if curve
        }
        risk_coverage_chart(risk, out / RISK_CHART)


def _evidence_charts(e: dict, out: Path) -> None:
    """The evidence curves by level (share beside raw mass) and the layer x head heat maps."""
    cells = {"all": e["all"], **e["per_level"]}
    curves = {level: (e["bins"], cell["curve"]) for level, cell in cells.items()}
    evidence_chart(
        curves, out / EVIDENCE_CHART, raw={lv: (e["bins"], c["curve_raw"]) for lv, c in cells.items()}
    )
    if e.get("profile"):
        profile_chart(
            e["profile"]["lift"], e["profile"]["layers"], e["profile"]["thirds"], out / PROFILE_CHART
        )


def _evidence_tables(e: dict) -> list[str]:
    """Length-free measures with their intervals, the raw masses apart, and the per-layer profile."""
    cells = {"all": e["all"], **e["per_level"]}
    free = [
        (
            level, c["n"], estimate(c["evidence_share"]), estimate(c["evidence_lift"], ".4f"),
            estimate(c["evidence_overlap"]), fmt(c["overlap_chance"]), fmt(c["early"]), fmt(c["late"]),
            estimate(c["collapse_ratio"], ".4f"),
        )
        for level, c in cells.items()
    ]  # fmt: skip
    raw = [
        (
            level, *(fmt(c[f"{g}_mass_raw"], ".4f") for g in ("image", "evidence", "target")),
            estimate(c["collapse_ratio_raw"]), fmt(c["entropy_full"]),
        )
        for level, c in cells.items()
    ]  # fmt: skip
    lines = [
        "Attention of each reasoning token (mean over heads and measured layers) on the image tokens, on "
        "the context objects' tokens (evidence) and on the hidden region's. Length-free measures: evidence "
        "share = evidence / image attention; lift = that share over the evidence's share of image tokens "
        "(1: no preference); top-k overlap = share of the k most-attended image tokens that are evidence "
        "(k = evidence tokens; a ranking blind to evidence scores the chance column); collapse ratio = "
        "late / early evidence share (1: none). Means with 95% item-bootstrap intervals and answers (n).",
        "",
        *markdown_table(
            (
                "level",
                "answers",
                "evidence share",
                "evidence lift",
                "top-k overlap",
                "overlap by chance",
                "early share",
                "late share",
                "collapse ratio",
            ),
            free,
        ),  # fmt: skip
        "Raw masses are shares of *all* attended keys, which grow with the reasoning: they fall along it "
        "even when the model's focus does not change, so the raw collapse ratio is no evidence of collapse.",
        "",
        *markdown_table(
            (
                "level",
                "image mass (raw)",
                "evidence mass (raw)",
                "target mass (raw)",
                "collapse ratio (raw mass)",
                "full-response entropy",
            ),
            raw,
        ),  # fmt: skip
        f"![evidence attention by reasoning position]({EVIDENCE_CHART})",
        "",
    ]
    return lines + _profile_lines(e.get("profile"))


def _profile_lines(profile: dict | None) -> list[str]:
    """Per measured layer, the mean evidence lift over heads in each third of the reasoning."""
    if not profile:
        return []
    rows = []
    for index, layer in enumerate(profile["layers"]):
        heads = [[h for h in third[index] if h is not None] for third in profile["lift"]]
        rows.append((layer, *(fmt(sum(h) / len(h) if h else None) for h in heads)))
    return [
        f"Evidence lift per layer (mean over its heads; {profile['n']} answers), by third of the reasoning; "
        "per head in the heat maps below.",
        "",
        *markdown_table(("layer", *(f"{third} third" for third in profile["thirds"])), rows),
        f"![evidence lift per layer and head]({PROFILE_CHART})",
        "",
    ]


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
        lines += _evidence_tables(section["evidence"]) + uncertainty_markdown(section["uncertainty"])
        lines += [f"![risk-coverage]({RISK_CHART})", ""]
    if "crm" in section:
        lines += _crm_markdown(section["crm"])
    if "entropy" in section:
        lines += _entropy_markdown(section["entropy"])
    return "\n".join(lines)


def _entropy_markdown(e: dict) -> list[str]:
    """The `entropy` diagnostic's table (mpcc.evaluation.grounding.entropy)."""
    lines = ["### Answer entropy", ""]
    if not e["n"]:
        return [*lines, "No answer had an entropy.", ""]
    rows = [
        ("mean full-response entropy (nats)", estimate(e["entropy_full"], ".4f")),
        ("AUROC of entropy for a wrong answer (0.5: chance)", estimate(e["auroc_wrong"], ".4f")),
        ("AURC ranking by -entropy (lower is better)", estimate(e["aurc"], ".4f")),
        ("AURC random / oracle", f"{fmt(e['aurc_random'], '.4f')} / {fmt(e['aurc_oracle'], '.4f')}"),
    ]
    source = f"from {', '.join(e['source'])} over {e['n']} answers"
    return [*lines, *markdown_table(("measure", source), rows)]


def _at(section: dict, path: tuple[str, ...]):
    for key in path:
        section = section.get(key) if isinstance(section, dict) else None
    return section


def _compared(value) -> str:
    """An estimate as `value [low, high] (n=...)`, a plain number to four decimals."""
    return estimate(value) if isinstance(value, dict) else fmt(value, ".4f")


def _length_free(section: dict) -> dict:
    """`section` without an evidence part from before the length-free measures."""
    old = "evidence" in section and "curve_raw" not in section["evidence"]["all"]
    return {k: v for k, v in section.items() if k != "evidence"} if old else section


def compare_grounding(sections: dict[str, dict], out: Path) -> list[str]:
    """Markdown lines comparing runs' grounding sections (MISSING where a run lacks a measure), and one
    evidence curve per run drawn under `out`. A run measured before the length-free measures (no raw
    curve: its curve and collapse ratio were raw mass) counts as without evidence measures."""
    sections = {name: _length_free(s) for name, s in sections.items()}
    rows = [(name, *(_compared(_at(s, path)) for path in COMPARED.values())) for name, s in sections.items()]
    lines = ["## Step-level grounding", "", *markdown_table(("run", *COMPARED), rows)]
    crm = {name: _at(s, ("crm", "all")) for name, s in sections.items()}
    lines += _crm_compare({name: c for name, c in crm.items() if c and "contrast" in c})
    monitored = {name: s["uncertainty"] for name, s in sections.items() if "uncertainty" in s}
    if monitored:
        lines += compare_uncertainty(monitored)
    measured = {name: s["evidence"] for name, s in sections.items() if "evidence" in s}
    if measured:
        curves = {name: (e["bins"], e["all"]["curve"]) for name, e in measured.items()}
        raw = {name: (e["bins"], e["all"]["curve_raw"]) for name, e in measured.items()}
        evidence_chart(curves, out / EVIDENCE_CHART, raw=raw)
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
