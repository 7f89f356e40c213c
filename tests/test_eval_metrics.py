"""Eval metrics on a hand-made record list with every number worked out by hand, the item bootstrap,
and the markdown report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mpcc.evaluation.metrics import bootstrap_ci, compute_metrics
from mpcc.reports.eval_report import markdown_report

ITEMS = {
    "i1": {"difficulty": "easy", "in_distribution": True, "supercategory": "kitchen"},
    "i2": {"difficulty": "hard", "in_distribution": False, "supercategory": "animal"},
    "i3": {"difficulty": "middle", "in_distribution": True, "supercategory": "animal"},
}


def record(item: str, fmt: str, answer: str, parsed: str | None, format_ok: bool, **extra) -> dict:
    correct = parsed is not None and parsed == answer
    row = {"item_id": item, **ITEMS[item], "format": fmt, "answer": answer}
    return {**row, "parsed": parsed, "correct": correct, "format_ok": format_ok, **extra}


def yesno(item: str, kind: str, parsed: str | None, format_ok: bool = True) -> dict:
    answer = "yes" if kind == "answer" else "no"
    return record(item, "yesno", answer, parsed, format_ok, candidate_kind=kind)


# 12 records; correct: r1 r3 r5 r8 r9 r11 r12 (7); format_ok: all but r5, r6 (10).
RECORDS = [
    record("i1", "mc4", "B", "B", True),  # r1
    record("i1", "mc7", "C", "A", True),  # r2
    yesno("i1", "answer", "yes"),  # r3
    yesno("i1", "confusable", "yes"),  # r4
    yesno("i1", "irrelevant", "no", format_ok=False),  # r5: read from the last line
    record("i2", "mc4", "A", None, False),  # r6
    yesno("i2", "answer", "no"),  # r7
    yesno("i2", "irrelevant", "no"),  # r8
    record("i2", "open", "dog", "dog", True, levenshtein=1.0),  # r9
    record("i1", "open", "cup", "mug", True, levenshtein=0.5),  # r10
    record("i3", "mc4", "D", "D", True),  # r11
    yesno("i3", "confusable", "no"),  # r12
]


def cell(correct: int, n: int) -> dict:
    return {"accuracy": pytest.approx(correct / n), "n": n}


def test_hand_computed_metrics():
    m = compute_metrics(RECORDS)
    assert (m["n"], m["items"], m["samples"]) == (12, 3, 1)
    assert m["accuracy"] == pytest.approx(7 / 12)
    assert m["format_compliance"] == pytest.approx(10 / 12)
    assert m["per_level"] == {"easy": cell(3, 6), "middle": cell(2, 2), "hard": cell(2, 4)}
    assert list(m["per_level"]) == ["easy", "middle", "hard"]
    assert m["per_format"] == {
        "mc4": {**cell(2, 3), "format_compliance": pytest.approx(2 / 3)},
        "mc7": {**cell(0, 1), "format_compliance": 1.0},
        "yesno": {**cell(4, 6), "format_compliance": pytest.approx(5 / 6)},
        "open": {**cell(1, 2), "format_compliance": 1.0},
    }
    assert list(m["per_format"]) == ["mc4", "mc7", "yesno", "open"]
    assert m["per_level_format"] == {
        "easy": {"mc4": cell(1, 1), "mc7": cell(0, 1), "yesno": cell(2, 3), "open": cell(0, 1)},
        "middle": {"mc4": cell(1, 1), "yesno": cell(1, 1)},
        "hard": {"mc4": cell(0, 1), "yesno": cell(1, 2), "open": cell(1, 1)},
    }
    assert m["distribution"] == {"in": cell(5, 8), "out": cell(2, 4)}
    assert m["per_supercategory"] == {"animal": cell(4, 6), "kitchen": cell(3, 6)}
    assert m["yesno_rates"] == {
        "yes_on_answer": {"rate": 0.5, "n": 2},  # r3 yes, r7 no
        "no_on_confusable": {"rate": 0.5, "n": 2},  # r4 yes, r12 no
        "no_on_irrelevant": {"rate": 1.0, "n": 2},  # r5, r8
    }
    assert m["open"] == {"exact_match": 0.5, "n": 2, "levenshtein": 0.75, "n_levenshtein": 2}
    assert "sampling" not in m
    assert json.loads(json.dumps(m)) == m


def test_optional_blocks_and_unknown_groups():
    """No open rows: no open block; no yes/no rows: no rates; missing fields group as unknown; a
    levenshtein-free open row reports exact match only; no format means open."""
    rows = [
        {"item_id": "x", "format": "mc4", "answer": "A", "parsed": "A", "correct": True, "format_ok": True},
        {"item_id": "y", "parsed": "cat", "correct": False, "format_ok": True, "in_distribution": None},
    ]
    m = compute_metrics(rows)
    assert m["per_level"] == {"unknown": cell(1, 2)}
    assert m["distribution"] == {"unknown": cell(1, 2)}
    assert m["per_supercategory"] == {"unknown": cell(1, 2)}
    assert m["yesno_rates"] == {}
    assert m["open"] == {"exact_match": 0.0, "n": 1}
    assert "open" not in compute_metrics(rows[:1])


def test_no_records_is_an_error():
    with pytest.raises(ValueError, match="no records"):
        compute_metrics([])


# ------------------------------------------------------------------------------------------ sampling


def sampled_records() -> list[dict]:
    """Three samples of the 12 records: sample 0 as above (7 right), sample 1 also gets r2 right (8),
    sample 2 also gets r4 right (8): 23 of 36."""
    out = [{**r, "sample": 0} for r in RECORDS]
    for s, fixed in ((1, 1), (2, 3)):
        for k, r in enumerate(RECORDS):
            right = {"parsed": r["answer"], "correct": True, "format_ok": True} if k == fixed else {}
            out.append({**r, "sample": s, **right})
    return out


def test_samples_give_mean_and_bootstrap_interval():
    m = compute_metrics(sampled_records())
    s = m["sampling"]
    assert (m["n"], m["samples"], s["samples"]) == (36, 3, 3)
    assert s["per_sample"] == [cell(7, 12), cell(8, 12), cell(8, 12)]
    assert s["mean"] == pytest.approx(23 / 36) == m["accuracy"]
    assert s["mean"] == pytest.approx(np.mean([c["accuracy"] for c in s["per_sample"]]))
    assert m["yesno_rates"]["no_on_confusable"] == {"rate": pytest.approx(4 / 6), "n": 6}  # r4 once, r12 x3
    low, high = s["ci95"]
    assert 0 <= low < s["mean"] < high <= 1
    assert (s["resamples"], s["seed"]) == (1000, 0)
    items = {"i1": [], "i2": [], "i3": []}
    for r in sampled_records():
        items[r["item_id"]].append(float(r["correct"]))
    assert s["ci95"] == list(bootstrap_ci(list(items.values()), seed=0))
    assert compute_metrics(sampled_records()) == m  # deterministic
    assert json.loads(json.dumps(m)) == m


def test_bootstrap_is_seeded_and_contains_the_mean():
    rng = np.random.default_rng(7)
    items = [list(rng.random(3) < 0.7) for _ in range(200)]
    mean = np.mean([v for values in items for v in values])
    low, high = bootstrap_ci(items, seed=0)
    assert bootstrap_ci(items, seed=0) == (low, high)
    assert bootstrap_ci(items, seed=1) != (low, high)
    assert low < mean < high
    # binomial standard error of 600 rows at p ~ 0.7 is ~0.019, so the 95% width is ~0.07
    assert 0.04 < high - low < 0.12


def test_bootstrap_resamples_items_not_rows():
    """One item all right and one all wrong: resampling rows would give a narrow interval around 0.5;
    resampling items keeps each item's rows together, so both extremes (0 and 1) stay likely."""
    assert bootstrap_ci([[1.0] * 10, [0.0] * 10], seed=0) == (0.0, 1.0)
    assert bootstrap_ci([[1.0, 1.0], [1.0]], seed=3) == (1.0, 1.0)


def test_bootstrap_needs_values():
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([[1.0], []])


# -------------------------------------------------------------------------------------------- report


def test_markdown_report_shows_the_numbers():
    report = markdown_report(json.loads(json.dumps(compute_metrics(RECORDS))), "mpcc eval: demo")
    assert report.startswith("# mpcc eval: demo\n")
    assert "12 records, 3 items, 1 sample(s)." in report
    for row in (
        "| accuracy | 0.583 | 12 |",
        "| format compliance | 0.833 | 12 |",
        "| open: exact match | 0.500 | 2 |",
        "| open: mean Levenshtein | 0.750 | 2 |",
        "| level | mc4 | mc7 | yesno | open | all |",
        "| easy | 1.000 (n=1) | 0.000 (n=1) | 0.667 (n=3) | 0.000 (n=1) | 0.500 (n=6) |",
        "| middle | 1.000 (n=1) | – | 1.000 (n=1) | – | 1.000 (n=2) |",
        "| all | 0.667 (n=3) | 0.000 (n=1) | 0.667 (n=6) | 0.500 (n=2) | 0.583 (n=12) |",
        "| yesno | 0.667 | 0.833 | 6 |",
        "| in distribution | 0.625 | 8 |",
        "| out of distribution (held-out categories) | 0.500 | 4 |",
        '| "yes" when asked about the answer | 0.500 | 2 |',
        '| "no" when asked about an irrelevant category | 1.000 | 2 |',
        "| animal | 0.667 | 6 |",
        "| kitchen | 0.500 | 6 |",
    ):
        assert row in report.splitlines(), row
    assert "samples [95% CI]" not in report


def test_markdown_report_with_samples():
    m = compute_metrics(sampled_records())
    report = markdown_report(m, "sampled")
    low, high = m["sampling"]["ci95"]
    assert f"| mean accuracy over 3 samples [95% CI] | 0.639 [{low:.3f}, {high:.3f}] | 36 |" in report
    assert "| accuracy per sample | 0.583, 0.667, 0.667 | 12, 12, 12 |" in report
