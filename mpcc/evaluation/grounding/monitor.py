"""The task-conditional monitor of "Don't Blink" (Raghu & Pandey) on one run's answers: which text signal
tells wrong answers best, whether confident-but-blind answers are hazardous in each task, a vision veto
targeted to the tasks where they are, and how a monitor fitted on one task transfers to another. Every
claim carries an item-bootstrap interval (`mpcc.evaluation.intervals.item_bootstrap`, seeded); the
measures are `mpcc.evaluation.grounding.uncertainty`'s, and like them the procedure is mpcc's own.

An answer (record) has `item_id`, `correct`, `entropy_full`, `entropy_answer` (None without an <answer>
span), `evidence_share` (V; None when its image has no evidence token) and `task`: the value of the
field `--monitor-task` names (question format by default; a level, a dataset or any column).

- Text signals, on every answer: AURC and AUROC (for predicting a wrong answer) of full-response and of
  answer-span entropy, the AUROC difference full minus answer on the answers that have both, and the
  selective risk at the coverage ranked by full-response entropy; per task the AUROCs again.
- The answers with V are split into halves by item (`uncertainty.split_halves`). On the fit half the
  interaction model is fitted pooled and per task (a fit needs `min_per_half` answers, right and wrong
  ones); coefficient intervals resample the fit half's items, FIT_RESAMPLES times (each resample fitted
  once for the four coefficients).
- A task is *targeted* when its beta_EV interval lies below 0. The targeted veto applies to targeted
  tasks only, each with a rule chosen on that task's fit half; the global veto applies one rule chosen
  on the whole fit half to every answer. On the evaluation half: selective risk at the coverage of the
  ranking of all its answers and of each task's answers, without a veto, with each, and with minus
  without. These intervals resample the evaluation half's items with the rules held fixed: they say
  how well these rules do on answers they were not chosen on, not how much the choice itself varies.
- Transfer: the pooled model and each task's, scored on each task's evaluation half (AURC of its
  P(correct) ranking, selective risk at the coverage), under the text-only row: full-response entropy.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mpcc.errors import ValidationError
from mpcc.evaluation.grounding.uncertainty import (
    COEFFICIENTS,
    InteractionModel,
    aurc,
    auroc_from_counts,
    choose_veto,
    fit_interaction,
    kept,
    risk_coverage,
    risk_curve,
    split_halves,
)
from mpcc.evaluation.intervals import MIN_ANSWERS, RESAMPLES, item_bootstraps

VISION = "evidence_share"  # V: length-free (mpcc.evaluation.grounding.evidence)
FIT_RESAMPLES = 200  # a resample refits the model: fewer, to keep a run's report within seconds
CURVE_POINTS = 101
ENTROPY_ROW = "entropy_full"  # the transfer table's text-only row
ALL = "all"  # the pooled answers, beside the tasks: no task may take the name
_ROW = operator.itemgetter("row")

Statistics = Callable[[np.ndarray], dict[str, float | None]]  # answers (row numbers) -> measures by name


@dataclass(frozen=True)
class _Answers:
    """A run's answers as arrays: answer i is row i of each (NaN where a measure is absent)."""

    items: list
    correct: np.ndarray
    entropy: np.ndarray
    answer_entropy: np.ndarray
    vision: np.ndarray
    task: np.ndarray
    coverage: float
    min_per_half: int

    def estimates(self, rows: np.ndarray, statistics: Statistics, resamples: int = RESAMPLES) -> dict:
        """`statistics(rows)` with item-bootstrap intervals, one bootstrap for the group; the resampled
        records are row numbers, so statistics index these arrays instead of reading dicts."""
        records = [{"item_id": self.items[i], "row": i} for i in rows]

        def on_rows(drawn: list[dict]) -> dict:
            return statistics(np.fromiter(map(_ROW, drawn), dtype=int, count=len(drawn)))

        estimates = item_bootstraps(records, on_rows, resamples=resamples)
        return {name: estimate.as_dict() for name, estimate in estimates.items()}

    def nothing(self, rows: np.ndarray) -> dict:
        """The estimate of a measure these answers do not define (too few, or of one kind)."""
        items = len({self.items[i] for i in rows})
        return {"value": None, "low": None, "high": None, "n": int(rows.size), "items": items}

    def fit(self, rows: np.ndarray) -> InteractionModel | None:
        """The interaction model on these answers, None when too few or all of one kind."""
        ok = self.correct[rows]
        if rows.size < self.min_per_half or ok.all() or not ok.any():
            return None
        return fit_interaction(self.entropy[rows], self.vision[rows], ok)


class _Rankings:
    """Rankings of the same answers, each most confident first, made once; a resample of the answers (row
    numbers, copies allowed) is then ranked by counting its copies of each answer instead of sorting,
    every ranking at once: the same order, with ties between different answers in row order, as on the
    answers themselves."""

    def __init__(self, correct: np.ndarray, orders: dict[str, np.ndarray]):
        self.names = list(orders)
        size = len(orders[self.names[0]])
        self.wrong = np.stack([~correct[order] for order in orders.values()])
        self.position = np.full((len(orders), correct.size), -1)
        for r, order in enumerate(orders.values()):
            self.position[r, order] = np.arange(size) + r * size  # offset: one bincount for all

    def measures(self, drawn: np.ndarray, coverage: float) -> dict[str, tuple[float, float]]:
        """{ranking: (AURC, selective risk at `coverage`)} of the drawn answers."""
        rankings, size = self.wrong.shape
        counts = np.bincount(self.position[:, drawn].ravel(), minlength=rankings * size)
        risk = risk_curve(np.repeat(self.wrong.ravel(), counts).reshape(rankings, drawn.size))
        at = risk[:, kept(drawn.size, coverage) - 1]
        return {name: (float(mean), float(r)) for name, mean, r in zip(self.names, risk.mean(axis=1), at)}


def _order(confidence: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`rows` by `confidence`, highest first (stable)."""
    return rows[np.argsort(-confidence[rows], kind="stable")]


def _veto_order(a: _Answers, flags: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`rows` by entropy with the vetoed ones behind the rest: `uncertainty.veto_risk`'s order."""
    return rows[np.lexsort((a.entropy[rows], flags[rows]))]


class _Scored:
    """Answers grouped once by score value, for the AUROC of any resample of them by counting."""

    def __init__(self, a: _Answers, score: np.ndarray, rows: np.ndarray):
        values, group = np.unique(score[rows], return_inverse=True)
        self.group = np.full(a.correct.size, -1)
        self.group[rows] = group.reshape(-1)
        self.groups, self.correct = values.size, a.correct

    def auroc(self, drawn: np.ndarray) -> float | None:
        group, wrong = self.group[drawn], ~self.correct[drawn]
        count = lambda g: np.bincount(g, minlength=self.groups)  # noqa: E731
        return auroc_from_counts(count(group[wrong]), count(group[~wrong]))


def _fields(records: Sequence[dict], key: str) -> list:
    for i, record in enumerate(records):
        if key not in record:
            raise ValidationError(f"uncertainty_report: record {i} has no {key!r}")
    return [record[key] for record in records]


def _numbers(records: Sequence[dict], key: str, required: bool = False) -> np.ndarray:
    """A measure of every record as floats; an optional one may be absent or None (NaN here)."""
    values = _fields(records, key) if required else [r.get(key) for r in records]
    try:
        return np.array([np.nan if v is None else v for v in values], dtype=float)
    except (TypeError, ValueError) as error:
        raise ValidationError(f"uncertainty_report: {key} must be numbers or None ({error})") from None


def _answers(records: Sequence[dict], coverage: float, min_per_half: int) -> _Answers:
    if not records:
        raise ValidationError("uncertainty_report: no records")
    if not 0 < coverage <= 1:
        raise ValidationError(f"coverage must be in (0, 1], got {coverage}")
    if min_per_half < 1:
        raise ValidationError(f"min_per_half must be >= 1, got {min_per_half}")
    correct = np.array(_fields(records, "correct"))
    if correct.dtype != bool:
        raise ValidationError("uncertainty_report: `correct` must be true or false in every record")
    entropy = _numbers(records, "entropy_full", required=True)
    if not np.isfinite(entropy).all():
        first = int(np.flatnonzero(~np.isfinite(entropy))[0])
        raise ValidationError(f"uncertainty_report: record {first} has no finite entropy_full")
    task = np.array([str(t) for t in _fields(records, "task")], dtype=object)
    if ALL in task:
        raise ValidationError(f"uncertainty_report: a task may not be called {ALL!r} (the pooled answers)")
    return _Answers(
        items=_fields(records, "item_id"),
        correct=correct,
        entropy=entropy,
        answer_entropy=_numbers(records, "entropy_answer"),
        vision=_numbers(records, VISION),
        task=task,
        coverage=float(coverage),
        min_per_half=min_per_half,
    )


def _aurocs(a: _Answers, rows: np.ndarray) -> dict:
    """On the answers of `rows` that have both entropies: the AUROC for a wrong answer of each, full minus
    answer, and the AURC of the answer-span ranking (the full-response one is over every answer)."""
    rows = rows[~np.isnan(a.answer_entropy[rows])]
    full, answer = _Scored(a, a.entropy, rows), _Scored(a, a.answer_entropy, rows)
    ranked = _Rankings(a.correct, {"answer": _order(-a.answer_entropy, rows)})

    def statistics(drawn: np.ndarray) -> dict:
        values = {"entropy_full": full.auroc(drawn), "entropy_answer": answer.auroc(drawn)}
        if None not in values.values():
            values["full_minus_answer"] = values["entropy_full"] - values["entropy_answer"]
        return {**values, "aurc_answer": ranked.measures(drawn, a.coverage)["answer"][0]}

    found = a.estimates(rows, statistics) if rows.size else {}
    names = ("entropy_full", "entropy_answer", "full_minus_answer", "aurc_answer")
    return {name: found.get(name, a.nothing(rows)) for name in names}


def _curve(confidence: np.ndarray, correct: np.ndarray) -> dict[str, list[float]] | None:
    """The risk-coverage curve thinned to at most CURVE_POINTS points for charting, last point kept."""
    if not confidence.size:
        return None
    coverage, risk = risk_coverage(confidence, correct)
    n = coverage.size
    index = np.arange(n) if n <= CURVE_POINTS else np.linspace(0, n - 1, CURVE_POINTS).round().astype(int)
    return {"coverage": coverage[index].tolist(), "risk": risk[index].tolist()}


def _text_signals(a: _Answers) -> dict:
    every = np.arange(a.correct.size)
    answered = every[~np.isnan(a.answer_entropy)]
    full = _Rankings(a.correct, {"full": _order(-a.entropy, every)})
    by_full = a.estimates(every, lambda r: dict(zip(("aurc", "risk"), full.measures(r, a.coverage)["full"])))
    aurocs = _aurocs(a, every)
    return {
        "aurc": {
            "entropy_full": by_full["aurc"],
            "entropy_answer": aurocs.pop("aurc_answer"),
            "random": float(np.mean(~a.correct)),
            "oracle": aurc(a.correct.astype(float), a.correct),
        },
        "risk_at_coverage": by_full["risk"],
        "auroc": aurocs,
        "curves": {
            "entropy_full": _curve(-a.entropy, a.correct),
            "entropy_answer": _curve(-a.answer_entropy[answered], a.correct[answered]),
        },
    }


def _model(a: _Answers, fit_rows: np.ndarray, eval_rows: np.ndarray) -> tuple[dict, InteractionModel | None]:
    """The interaction model on `fit_rows`: coefficients with intervals (FIT_RESAMPLES refits) and its
    held-out log loss on `eval_rows`; and the model itself (None: not fitted)."""

    def statistics(rows: np.ndarray) -> dict:
        model = a.fit(rows)
        return {} if model is None else model.coefficients

    coefficients = a.estimates(fit_rows, statistics, FIT_RESAMPLES) if fit_rows.size else {}
    model = a.fit(fit_rows)
    held_out = model is not None and eval_rows.size > 0
    return {
        "n_fit": int(fit_rows.size),
        "n_eval": int(eval_rows.size),
        "coefficients": {name: coefficients.get(name, a.nothing(fit_rows)) for name in COEFFICIENTS},
        "heldout_log_loss": model.log_loss(
            a.entropy[eval_rows], a.vision[eval_rows], a.correct[eval_rows]
        ) if held_out else None,
    }, model  # fmt: skip


def _hazardous(model: dict) -> bool:
    """The targeting rule: the beta_EV interval lies below 0."""
    interaction = model["coefficients"]["interaction"]
    return interaction["high"] is not None and interaction["high"] < 0


def _scores(
    a: _Answers, rows: np.ndarray, vetoes: dict[str, np.ndarray], confidences: dict
) -> tuple[dict, dict]:
    """On the evaluation answers `rows`, one bootstrap for: selective risk without a veto and with each
    (`vetoes`: flags over all answers), and the AURC and risk of each transfer row's ranking."""
    orders = {name: _order(confidence, rows) for name, confidence in confidences.items()}
    orders |= {f"veto:{name}": _veto_order(a, flags, rows) for name, flags in vetoes.items()}
    rankings = _Rankings(a.correct, orders)

    def statistics(drawn: np.ndarray) -> dict:
        measured = rankings.measures(drawn, a.coverage)
        out = {"without": measured[ENTROPY_ROW][1]}
        for name in confidences:
            out[f"{name}/aurc"], out[f"{name}/risk"] = measured[name]
        for name in vetoes:
            out[name] = measured[f"veto:{name}"][1]
            out[f"{name}_minus_without"] = out[name] - out["without"]
        return out

    found = a.estimates(rows, statistics) if rows.size else {}
    names = ["without", *(f"{name}{suffix}" for name in vetoes for suffix in ("", "_minus_without"))]
    veto = {
        "n": int(rows.size),
        **{name: found.get(name, a.nothing(rows)) for name in names},
        **{f"{name}_vetoed": int(flags[rows].sum()) for name, flags in vetoes.items()},
    }
    transfer = {
        name: {m: found.get(f"{name}/{m}", a.nothing(rows)) for m in ("aurc", "risk")} for name in confidences
    }
    return veto, transfer


def _confidences(a: _Answers, models: dict[str, InteractionModel | None]) -> dict[str, np.ndarray]:
    """The transfer table's rankings: full-response entropy, then each fitted model's P(correct)."""
    confidences = {ENTROPY_ROW: -a.entropy}
    seen = ~np.isnan(a.vision)
    for name, model in models.items():
        if model is not None:
            confidences[name] = np.full(a.correct.size, np.nan)
            confidences[name][seen] = model.predict(a.entropy[seen], a.vision[seen])
    return confidences


def _veto_rules(a: _Answers, chosen: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[dict, np.ndarray]:
    """Each veto rule (by the answers it applies to) chosen on its fit rows, and the flags it raises on
    its evaluation rows."""
    flags, rules = np.zeros(a.correct.size, bool), {}
    for name, (fit_rows, eval_rows) in chosen.items():
        rule = choose_veto(a.entropy[fit_rows], a.vision[fit_rows], a.correct[fit_rows], a.coverage)
        flags[eval_rows] = rule.vetoes(a.entropy[eval_rows], a.vision[eval_rows])
        rules[name] = {**dataclasses.asdict(rule), "n_fit": int(fit_rows.size)}
    return rules, flags


def _monitor(a: _Answers) -> dict:
    seen = np.flatnonzero(~np.isnan(a.vision))
    in_fit = split_halves(a.items[i] for i in seen)
    fit_all, eval_all = seen[in_fit], seen[~in_fit]
    tasks = sorted(set(a.task[seen]))
    halves = {t: (fit_all[a.task[fit_all] == t], eval_all[a.task[eval_all] == t]) for t in tasks}
    pooled, pooled_model = _model(a, fit_all, eval_all)
    per_task = {t: _model(a, *halves[t]) for t in tasks}
    targeted = [t for t in tasks if _hazardous(per_task[t][0])]

    enough = fit_all.size >= a.min_per_half
    global_rule, global_flags = _veto_rules(a, {ALL: (fit_all, eval_all)} if enough else {})
    targeted_rules, targeted_flags = _veto_rules(a, {t: halves[t] for t in targeted})
    vetoes = {"global": global_flags, "targeted": targeted_flags}
    confidences = _confidences(a, {"pooled": pooled_model, **{t: m for t, (_, m) in per_task.items()}})
    columns = {ALL: eval_all, **{t: halves[t][1] for t in tasks}}
    scores = {column: _scores(a, rows, vetoes, confidences) for column, rows in columns.items()}
    return {
        "vision": VISION,
        "n_fit": int(fit_all.size),
        "n_eval": int(eval_all.size),
        "pooled": pooled,
        "tasks": {t: {**per_task[t][0], "targeted": t in targeted} for t in tasks},
        "targeted": targeted,
        "rules": {"global": global_rule.get(ALL), "targeted": targeted_rules},
        "veto": {ALL: scores[ALL][0], "per_task": {t: scores[t][0] for t in tasks}},
        "transfer": {name: {column: scores[column][1][name] for column in columns} for name in confidences},
    }


def uncertainty_report(
    records: Sequence[dict], coverage: float = 0.9, min_per_half: int = MIN_ANSWERS
) -> dict:
    """The run's uncertainty section of metrics.json (see the module docstring): JSON-ready, every
    estimate a dict `value, low, high, n, items` (`low`/`high` None: too few answers for a claim)."""
    a = _answers(records, coverage, min_per_half)
    every = np.arange(a.correct.size)
    return {
        "n": int(a.correct.size),
        "coverage": a.coverage,
        "resamples": {"default": RESAMPLES, "fits": FIT_RESAMPLES},
        **_text_signals(a),
        "auroc_per_task": {t: _aurocs(a, every[a.task == t]) for t in sorted(set(a.task))},
        "monitor": _monitor(a),
    }
