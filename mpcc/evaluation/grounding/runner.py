"""`--diagnostics crm,evidence`: the step-level measures of `mpcc.evaluation.grounding.evidence` (evidence
attention, entropy; then `uncertainty`: AURC, the entropy x vision model, the vision veto) and
`mpcc.evaluation.grounding.crm` over an eval run's greedy answers.

Evidence is measured on every evaluated row's answer; CRM (one forward and one regeneration per
region set) on one answer per item: its open question when evaluated, else its first row. Records
are appended to `grounding.jsonl` as they come, so a stopped run resumes where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from mpcc.evaluation.config import EvalConfig
from mpcc.evaluation.grounding.attention import resolve_layers
from mpcc.evaluation.grounding.crm import crm_record, summarise_crm
from mpcc.evaluation.grounding.evidence import evidence_record, summarise_evidence
from mpcc.evaluation.grounding.uncertainty import uncertainty_report
from mpcc.evaluation.metrics import table
from mpcc.generation.decoding import Decoding
from mpcc.outputs import read_appended
from mpcc.reports.charts import evidence_chart, risk_coverage_chart

EVIDENCE_COLUMNS = (
    "image_mass", "evidence_mass", "evidence_share", "target_mass", "early", "late", "collapse_ratio",
    "entropy_full",
)  # fmt: skip
CRM_COLUMNS = ("answer_change_rate", "step_similarity", "hallucinated_evidence_rate", "collapse_rate")
GROUNDING, EVIDENCE_CHART, RISK_CHART = "grounding.jsonl", "grounding.png", "risk_coverage.png"
KEPT = ("prompt_id", "item_id", "format", "difficulty", "correct")


def _read(path: Path) -> dict[tuple[str, str], dict]:
    """Records already made, by (kind, prompt id); a line cut by a kill is dropped and made again."""
    return {(r["kind"], r["prompt_id"]): r for r in read_appended(path, ("kind", "prompt_id"))}


def _crm_answers(answers: list[dict]) -> list[dict]:
    """One answer per item: its open question when there is one, else its first row."""
    chosen: dict[str, dict] = {}
    for answer in answers:
        current = chosen.get(answer["item_id"])
        if current is None or (answer["format"] == "open" and current["format"] != "open"):
            chosen[answer["item_id"]] = answer
    return list(chosen.values())


def run_step_diagnostics(
    model_source, generator_source, diagnostics, rows: dict[str, dict], answers: list[dict],
    config: EvalConfig, out: Path,
) -> dict:  # fmt: skip
    """The `grounding` section of metrics.json. `answers` are the normal-condition greedy predictions,
    `rows` the eval rows by prompt id; `model_source()` gives (model, processor) for the measuring
    passes and `generator_source()` the generator that regenerates on ablated images."""
    path = out / GROUNDING
    done = _read(path)
    answers = [a for a in answers if a["completion"]]
    todo = [("evidence", a) for a in answers if "evidence" in config.diagnostics]
    todo += [("crm", a) for a in _crm_answers(answers) if "crm" in config.diagnostics]
    todo = [(kind, a) for kind, a in todo if (kind, a["prompt_id"]) not in done]
    if todo:
        model, processor = model_source()
        generator = generator_source()
        layers = resolve_layers(model, config.attention_layers)
        greedy = Decoding(max_new_tokens=config.decoding.max_new_tokens)
        with open(path, "a", encoding="utf-8") as f:
            for kind, answer in tqdm(todo, desc="step diagnostics", unit="answer"):
                row = rows[answer["prompt_id"]]
                if kind == "evidence":
                    record = evidence_record(
                        model, processor, row, answer["completion"], diagnostics.regions(row), layers
                    )
                else:
                    record = crm_record(
                        model, processor, lambda rs: generator(rs, greedy, config.seed), diagnostics, row,
                        answer["completion"], config.crm_regions,
                    )  # fmt: skip
                record = {"kind": kind, **{k: answer[k] for k in KEPT}, **record}
                done[(kind, answer["prompt_id"])] = record
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
    wanted = {a["prompt_id"] for a in answers}
    records = {"evidence": [], "crm": []}
    for (kind, pid), record in done.items():
        if pid in wanted:
            records[kind].append(record)
    section = {}
    if "evidence" in config.diagnostics:
        section["evidence"] = summarise_evidence(records["evidence"])
        section["uncertainty"] = uncertainty_report(records["evidence"])
    if "crm" in config.diagnostics:
        section["crm"] = summarise_crm(records["crm"])
    return section


def charts(section: dict, out: Path) -> None:
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


def _n(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


_LABELS = {
    "entropy_full": "full-response entropy",
    "entropy_answer": "answer-span entropy",
    "interaction": "entropy x vision model",
}


def _label(key: str) -> str:
    return _LABELS.get(key, key.removesuffix("_rate").replace("_", " "))


def _evidence_markdown(e: dict, u: dict) -> list[str]:
    rows = [
        (level, c["n"], *(_n(c[k], 4) for k in EVIDENCE_COLUMNS))
        for level, c in {"all": e["all"], **e["per_level"]}.items()
    ]
    risk = u["risk_at_coverage"]
    vetoed = "–" if risk["vetoed"] is None else risk["vetoed"]
    lines = [
        "Attention of each reasoning token (mean over heads and measured layers) on the image, on the "
        "context objects (evidence) and on the hidden region; collapse ratio = late / early evidence mass.",
        "",
        *table(("level", "answers", *map(_label, EVIDENCE_COLUMNS)), rows),
        f"![evidence attention by reasoning position]({EVIDENCE_CHART})",
        "",
        *table(
            ("ranking (most confident first)", "AURC"),
            [(_label(k), _n(v)) for k, v in u["aurc"].items()],
        ),
        f"Selective risk at {risk['coverage']:.0%} coverage ranked by full-response entropy: "
        f"{_n(risk['entropy_full'])} ({u['n']} answers). Vision veto (abstain when confident but visually "
        f"disengaged; fitted on {u['n_fit']} answers, evaluated on {u['n_eval']}): "
        f"{_n(risk['without_veto'])} without, {_n(risk['with_veto'])} with ({vetoed} vetoed).",
        "",
    ]
    if u["interaction"]:
        i = u["interaction"]
        lines += [
            "Entropy x vision model, P(wrong) = sigmoid(b0 + b1 H + b2 V + b3 H V) on standardised features: "
            f"b0 {_n(i['intercept'])}, b1 {_n(i['entropy'])}, b2 {_n(i['vision'])}, "
            f"b3 {_n(i['interaction'])}; held-out log loss {_n(i['heldout_log_loss'])}; AURC on the "
            f"evaluation half {_n(u['aurc']['interaction'])} (full-response entropy on the same answers: "
            f"{_n(i['aurc_entropy_full_eval_half'])}).",
            "",
        ]
    return lines + [f"![risk-coverage]({RISK_CHART})", ""]


def _crm_markdown(c: dict) -> list[str]:
    rows = [
        (level, cell["answers"], cell["pairs"], *(_n(d, 4) for d in cell["mean_delta"].values()))
        + tuple(_n(cell[k]) for k in CRM_COLUMNS)
        for level, cell in {"all": c["all"], **c["per_level"]}.items()
    ]
    positions = ", ".join(f"{p:.1f}: {_n(d, 4)}" for p, d in zip(c["bins"], c["all"]["delta_by_position"]))
    header = ("level", "answers", "pairs", "delta (one object)", "delta (top-k)")
    return [
        "Contrastive region masking: context objects hidden one at a time, and the most predictive together; "
        "delta = change of a step's mean token log-probability (negative: the step leaned on the region).",
        "",
        *table((*header, *map(_label, CRM_COLUMNS)), rows),
        f"Mean delta by step position: {positions}.",
        "",
    ]


def markdown(section: dict) -> str:
    """The report's tables for the section (measures defined in the README, "Step-level grounding")."""
    lines = ["", "## Step-level grounding", ""]
    if "evidence" in section:
        lines += _evidence_markdown(section["evidence"], section["uncertainty"])
    if "crm" in section:
        lines += _crm_markdown(section["crm"])
    return "\n".join(lines)


COMPARED = {  # column: where it sits in a run's grounding section
    "evidence mass": ("evidence", "all", "evidence_mass"),
    "collapse ratio": ("evidence", "all", "collapse_ratio"),
    "AURC (full-response entropy)": ("uncertainty", "aurc", "entropy_full"),
    "risk at coverage, veto": ("uncertainty", "risk_at_coverage", "with_veto"),
    "CRM hallucinated evidence": ("crm", "all", "hallucinated_evidence_rate"),
    "CRM collapse": ("crm", "all", "collapse_rate"),
}


def _at(section: dict, path: tuple[str, ...]):
    for key in path:
        section = section.get(key) if isinstance(section, dict) else None
    return section


def compare(sections: dict[str, dict], out: Path) -> list[str]:
    """Markdown lines comparing runs' grounding sections, and one evidence curve per run."""
    rows = [(name, *(_n(_at(s, path), 4) for path in COMPARED.values())) for name, s in sections.items()]
    lines = ["## Step-level grounding", "", *table(("run", *COMPARED), rows)]
    curves = {
        name: (s["evidence"]["bins"], s["evidence"]["all"]["curve"])
        for name, s in sections.items()
        if "evidence" in s
    }
    if curves:
        evidence_chart(curves, out / EVIDENCE_CHART)
        lines.append(f"![evidence attention by reasoning position]({EVIDENCE_CHART})")
    return lines
