"""Eval metrics from scored predictions, broken down the ways MPCC results are read (rendered by
mpcc.reports.eval_report).

Every accuracy comes with its count `n` (records, so rows x samples), because a breakdown cell over a
handful of rows is noise. Groups with no records are left out rather than reported as 0. With several
samples per row (`mpcc eval --samples N`) the accuracy is pooled over samples and gets a 95% bootstrap
interval that resamples whole items: the rows of one hidden object share its image, so resampling rows
would understate the spread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from mpcc.data.difficulty import LEVELS
from mpcc.evaluation.parsing import PARSED_FORMATS

SPLITS = ("in", "out")
# name: (candidate_kind of the yes/no row, the reply that is right for it)
YESNO_RATES = {
    "yes_on_answer": ("answer", "yes"),
    "no_on_confusable": ("confusable", "no"),
    "no_on_irrelevant": ("irrelevant", "no"),
}
RESAMPLES = 1000
CI_LEVEL = 0.95

Record = dict[str, Any]


def _level(record: Record) -> str:
    return record.get("difficulty") or "unknown"


def _format(record: Record) -> str:
    return record.get("format") or "open"


def _split(record: Record) -> str:
    return {True: "in", False: "out"}.get(record.get("in_distribution"), "unknown")


def _supercategory(record: Record) -> str:
    return record.get("supercategory") or "unknown"


def _sample(record: Record) -> int:
    return int(record.get("sample") or 0)


def _rate(records: Sequence[Record], key: str) -> float:
    return sum(bool(r[key]) for r in records) / len(records)


def _cell(records: Sequence[Record]) -> dict[str, Any]:
    return {"accuracy": _rate(records, "correct"), "n": len(records)}


def _groups(
    records: Iterable[Record], key: Callable[[Record], str], order: Sequence[str] = ()
) -> dict[str, list[Record]]:
    """Records by key, the known keys in their natural order (easy, middle, hard) and the rest sorted."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    ordered = [k for k in order if k in groups] + sorted(k for k in groups if k not in order)
    return {k: groups[k] for k in ordered}


def bootstrap_ci(
    values_per_item: Sequence[Sequence[float]],
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = CI_LEVEL,
) -> tuple[float, float]:
    """Percentile interval of the pooled mean of all values, resampling items with replacement.

    Each item brings all its values (its rows and samples) along, keeping their correlation; the
    seeded generator makes the interval a pure function of its inputs.
    """
    sums = np.array([float(np.sum(values)) for values in values_per_item])
    counts = np.array([len(values) for values in values_per_item])
    if not len(counts) or not counts.all():
        raise ValueError("bootstrap_ci needs at least one item, each with at least one value")
    rng = np.random.default_rng(seed)
    n = len(counts)
    chunk = max(1, 1_000_000 // n)  # bounds the index matrix to ~8 MB whatever the eval size
    stats = np.empty(resamples)
    for start in range(0, resamples, chunk):
        picks = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        stats[start : start + len(picks)] = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _yesno_rates(records: Sequence[Record]) -> dict[str, dict[str, Any]]:
    """How often the model says the right word per candidate kind: a yes-sayer scores high on the answer
    and low on confusables, which a single yes/no accuracy hides."""
    rows = [r for r in records if _format(r) == "yesno"]
    rates = {}
    for name, (kind, reply) in YESNO_RATES.items():
        asked = [r for r in rows if r.get("candidate_kind") == kind]
        if asked:
            rates[name] = {"rate": sum(r["parsed"] == reply for r in asked) / len(asked), "n": len(asked)}
    return rates


def _open(records: Sequence[Record]) -> dict[str, Any]:
    open_rows = [r for r in records if _format(r) == "open"]
    block: dict[str, Any] = {"exact_match": _rate(open_rows, "correct"), "n": len(open_rows)}
    similarities = [float(r["levenshtein"]) for r in open_rows if r.get("levenshtein") is not None]
    if similarities:
        block.update(levenshtein=sum(similarities) / len(similarities), n_levenshtein=len(similarities))
    return block


def _sampling(records: Sequence[Record], seed: int) -> dict[str, Any]:
    by_sample = _groups(records, lambda r: str(_sample(r)))
    by_item = _groups(records, lambda r: str(r.get("item_id")))
    low, high = bootstrap_ci([[float(r["correct"]) for r in rs] for rs in by_item.values()], seed=seed)
    return {
        "samples": len(by_sample),
        "per_sample": [_cell(by_sample[k]) for k in sorted(by_sample, key=int)],
        "mean": _rate(records, "correct"),
        "ci95": [low, high],
        "resamples": RESAMPLES,
        "seed": seed,
    }


def compute_metrics(records: Sequence[Record], seed: int = 0) -> dict[str, Any]:
    """JSON-ready metrics of scored records (row fields + `parsed`, `correct`, `format_ok`, optionally
    `sample` and `levenshtein`).

    Keys: n, items, samples, accuracy, format_compliance; per_level, per_format (with
    format_compliance), per_level_format[level][format], distribution (in / out), per_supercategory —
    each cell {"accuracy", "n"}; yesno_rates {name: {"rate", "n"}}; `open` (exact_match, n, and mean
    levenshtein when records carry it) when there are open rows; `sampling` (accuracy and n per sample,
    pooled mean, 95% item-bootstrap interval) when there are several samples. The pooled mean equals
    the mean of the per-sample accuracies once every sample covers the same rows.
    """
    if not records:
        raise ValueError("no records to compute metrics from")
    per_level = _groups(records, _level, LEVELS)
    per_format = _groups(records, _format, PARSED_FORMATS)
    metrics: dict[str, Any] = {
        "n": len(records),
        "items": len({r.get("item_id") for r in records}),
        "samples": len({_sample(r) for r in records}),
        "accuracy": _rate(records, "correct"),
        "format_compliance": _rate(records, "format_ok"),
        "per_level": {k: _cell(rs) for k, rs in per_level.items()},
        "per_format": {
            k: {**_cell(rs), "format_compliance": _rate(rs, "format_ok")} for k, rs in per_format.items()
        },
        "per_level_format": {
            level: {fmt: _cell(cell) for fmt, cell in _groups(rs, _format, PARSED_FORMATS).items()}
            for level, rs in per_level.items()
        },
        "distribution": {k: _cell(rs) for k, rs in _groups(records, _split, SPLITS).items()},
        "per_supercategory": {k: _cell(rs) for k, rs in _groups(records, _supercategory).items()},
        "yesno_rates": _yesno_rates(records),
    }
    if "open" in per_format:
        metrics["open"] = _open(records)
    if metrics["samples"] > 1:
        metrics["sampling"] = _sampling(records, seed)
    return metrics
