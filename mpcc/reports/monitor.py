"""The uncertainty part of the step-level grounding section: text signals, the task-conditional monitor
(entropy x vision model per task, targeted and global vision veto, transfer) of one run, and its line in a
comparison; rendered from `metrics.json`'s `grounding.uncertainty` (mpcc.evaluation.grounding.monitor).
Every estimate prints as `value [low, high] (n=N)`, or "too few answers (n=N)"."""

from __future__ import annotations

from mpcc.reports.tables import MISSING, estimate, fmt, markdown_table

SIGNALS = {"entropy_full": "full-response entropy", "entropy_answer": "answer-span entropy"}
FITTED = "fitted on"


def _signals(u: dict) -> list[str]:
    auroc, aurc = u["auroc"], u["aurc"]
    rows = [(label, estimate(aurc[key]), estimate(auroc[key])) for key, label in SIGNALS.items()]
    rows += [("random", fmt(aurc["random"]), "0.500"), ("oracle", fmt(aurc["oracle"]), MISSING)]
    per_task = [
        (task, *(estimate(cell[key]) for key in (*SIGNALS, "full_minus_answer")))
        for task, cell in u["auroc_per_task"].items()
    ]
    return [
        f"Ranked most confident (lowest entropy) first; intervals are 95% item bootstraps "
        f"({u['resamples']['default']} resamples, {u['resamples']['fits']} refits for model coefficients). "
        "AUROC: how well the entropy alone tells wrong answers from right ones (0.5: chance; on the answers "
        "with an answer span).",
        "",
        *markdown_table(("ranking", "AURC", "AUROC (wrong)"), rows),
        f"Full-response minus answer-span AUROC: {estimate(auroc['full_minus_answer'])}. Selective risk at "
        f"{u['coverage']:.0%} coverage ranked by full-response entropy: {estimate(u['risk_at_coverage'])}.",
        "",
        *markdown_table(
            (u.get("task_key", "task"), "AUROC full-response", "AUROC answer-span", "full minus answer"),
            per_task,
        ),
    ]


def _monitor_rows(m: dict) -> list[tuple]:
    veto = {"all": m["veto"]["all"], **m["veto"]["per_task"]}
    models = {"all": m["pooled"], **m["tasks"]}
    rows = []
    for task, model in models.items():
        scores, targeted = veto[task], model.get("targeted")
        rows.append((
            task, model["n_fit"], estimate(model["coefficients"]["interaction"]),
            estimate(model["coefficients"]["vision"]), {None: MISSING, True: "yes", False: "no"}[targeted],
            estimate(scores["without"]), estimate(scores["global_minus_without"]),
            estimate(scores["targeted_minus_without"]),
        ))  # fmt: skip
    return rows


def _transfer(m: dict, measure: str) -> list[str]:
    columns = list(next(iter(m["transfer"].values())))
    rows = [
        (SIGNALS.get(name, name), *(estimate(m["transfer"][name][c][measure]) for c in columns))
        for name in m["transfer"]
    ]
    return markdown_table((FITTED, *(f"scored on {c}" for c in columns)), rows)


def uncertainty_markdown(u: dict) -> list[str]:
    """The run's uncertainty tables for report.md."""
    m, coverage = u["monitor"], f"{u['coverage']:.0%}"
    rule = m["rules"]["global"]
    global_rule = (
        f"global rule (fit half): entropy < {fmt(rule['entropy_threshold'])}, "
        f"V < {fmt(rule['vision_threshold'])} (q = {rule['vision_quantile']})"
        if rule
        else f"no global rule (too few answers, n={m['n_fit']})"
    )
    targeted = ", ".join(m["targeted"]) or "none"
    header = (
        u.get("task_key", "task"), "fit answers", "beta_EV [entropy x vision]", "beta_V", "targeted",
        f"risk at {coverage}, eval half", "global veto minus without", "targeted veto minus without",
    )  # fmt: skip
    return [
        *_signals(u),
        "Task-conditional monitor: P(correct) = sigmoid(b0 + bE H + bV V + bEV H V) on standardised "
        f"full-response entropy H and V = {m['vision']} (share of image attention on the evidence), fitted "
        f"on the fit half ({m['n_fit']} answers) pooled and per task; a task is targeted when its beta_EV "
        "interval lies below 0 (confident-but-blind answers hazardous), and the targeted veto abstains first "
        "on its confident (entropy below the fit-half median) and disengaged (V below a fit-half quantile) "
        f"answers; the global veto does so in every task. Scored on the evaluation half ({m['n_eval']} "
        f"answers; with minus without: negative lowers the risk). Targeted: {targeted}; {global_rule}.",
        "",
        *markdown_table(header, _monitor_rows(m)),
        f"Transfer: AURC of each fit's P(correct) ranking on each task's evaluation half (lower is better), "
        "under the text-only ranking by full-response entropy; then selective risk at "
        f"{coverage} coverage.",
        "",
        *_transfer(m, "aurc"),
        *_transfer(m, "risk"),
    ]


COMPARED = {  # column: where it sits in a run's uncertainty section
    "AURC (full-response entropy)": ("aurc", "entropy_full"),
    "AUROC full minus answer-span": ("auroc", "full_minus_answer"),
    "global veto minus without": ("monitor", "veto", "all", "global_minus_without"),
    "targeted veto minus without": ("monitor", "veto", "all", "targeted_minus_without"),
}


def _at(section: dict, path: tuple[str, ...]):
    for key in path:
        section = section.get(key) if isinstance(section, dict) else None
    return section


def compare_uncertainty(sections: dict[str, dict]) -> list[str]:
    """One line per run: its text signals and vetoes, with intervals and n (MISSING where a run, e.g. one
    made before the monitor, lacks a measure)."""
    rows = []
    for name, u in sections.items():
        targeted = _at(u, ("monitor", "targeted"))
        cells = [_at(u, path) for path in COMPARED.values()]
        rows.append((name, *(estimate(c) if isinstance(c, dict) else MISSING for c in cells),
                     MISSING if targeted is None else ", ".join(targeted) or "none"))  # fmt: skip
    header = ("run", *COMPARED, "targeted tasks")
    return ["", "Uncertainty monitor (vetoes on the evaluation half):", "", *markdown_table(header, rows)]
