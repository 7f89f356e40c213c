"""Distractors, option items, co-occurrence statistics and difficulty on their own."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpcc.data.answer_options import (
    LETTERS,
    Distractors,
    compute_distractors,
    make_items,
    override_distractors,
)
from mpcc.data.cooccurrence import CooccurrenceStats, rank_score
from mpcc.data.difficulty import difficulty_score, level, level_thresholds

NAMES = [f"cat{i}" for i in range(12)]
SUPERS = ["a"] * 4 + ["b"] * 4 + ["c"] * 4


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    answer=st.sampled_from(NAMES),
    present=st.sets(st.sampled_from(NAMES), max_size=4),
)
def test_distractors_never_answer_present_or_duplicated(seed, answer, present):
    scores = np.random.default_rng(seed).random(len(NAMES))
    d = compute_distractors(scores, NAMES, SUPERS, answer, present, random.Random(seed))
    chosen = d.choice + d.judgement + d.irrelevant
    assert len(chosen) == len(set(chosen))
    assert not set(chosen) & (present | {answer})
    confusable = d.choice + d.judgement
    assert [scores[NAMES.index(n)] for n in confusable] == sorted(
        (scores[NAMES.index(n)] for n in confusable), reverse=True
    )
    if d.irrelevant:
        assert max(scores[NAMES.index(n)] for n in d.irrelevant) <= min(
            scores[NAMES.index(n)] for n in confusable
        )
        assert all(SUPERS[NAMES.index(n)] != SUPERS[NAMES.index(answer)] for n in d.irrelevant)
    again = compute_distractors(scores, NAMES, SUPERS, answer, present, random.Random(seed))
    assert again == d


def test_items_per_format():
    d = Distractors(("c1", "c2"), ("j1", "j2"), ("i1", "i2"))
    (mc4,) = make_items("cup", d, "mc4", random.Random(0))
    assert sorted(mc4["options"]) == sorted(["cup", "c1", "c2", "i1"])
    assert mc4["options"][LETTERS.index(mc4["answer"])] == "cup"
    (mc7,) = make_items("cup", d, "mc7", random.Random(0))
    assert len(mc7["options"]) == 7 and mc7["options"][LETTERS.index(mc7["answer"])] == "cup"
    yesno = make_items("cup", d, "yesno", random.Random(0))
    assert [(r["candidate"], r["answer"]) for r in yesno] == [
        ("cup", "yes"),
        ("j1", "no"),
        ("j2", "no"),
        ("i1", "no"),
        ("i2", "no"),
    ]
    assert make_items("cup", Distractors(("c1",), (), ()), "mc4", random.Random(0)) == []
    with pytest.raises(ValueError, match="unknown format"):
        make_items("cup", d, "mc5", random.Random(0))
    letters = {make_items("cup", d, "mc7", random.Random(s))[0]["answer"] for s in range(40)}
    assert len(letters) > 3  # the shuffle moves the answer around


def test_override_keeps_order_drops_answer_and_duplicates():
    computed = Distractors(("c1", "c2"), ("j1", "j2"), ("i1", "i2"))
    d = override_distractors(computed, "Cup", ["cup", " Bowl ", "bowl", "", "plate"], ["sky"])
    assert d == Distractors(("Bowl", "plate"), ("c1", "c2"), ("sky", "i1"))


def _stats():
    # 4 images: {a, b}, {a, b}, {a, c}, {d}
    names = ["a", "b", "c", "d"]
    presence = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]])
    return CooccurrenceStats(names, ["x", "x", "y", "y"], 4, presence.sum(0), presence.T @ presence)


def test_conditional_and_leave_one_out():
    s = _stats()
    p = s.conditional(["a"])
    # P(b | a) = (2 + 1) / (3 + 4), P(d | a) = (0 + 1) / (3 + 4)
    assert p[1] == pytest.approx(3 / 7) and p[3] == pytest.approx(1 / 7)
    # leaving out an image {a, b}: P(b | a) = (1 + 1) / (2 + 4)
    assert s.conditional(["a"], exclude=["a", "b"])[1] == pytest.approx(2 / 6)
    assert s.conditional([]).sum() == pytest.approx(1.0)
    assert CooccurrenceStats.from_json(s.to_json()).conditional(["a"]) == pytest.approx(p)


def test_rank_score_and_levels():
    scores = np.array([0.1, 0.5, 0.3, 0.3])
    assert rank_score(scores, 1, range(4)) == 1.0
    assert rank_score(scores, 0, range(4)) == 0.0
    assert rank_score(scores, 2, range(4)) == pytest.approx(0.5)  # one below, one tie
    assert difficulty_score(1.0, 8, 0.0) == 0.0 and difficulty_score(0.0, 0, 1.0) == 1.0
    assert difficulty_score(1.0, 2, 0.1) < difficulty_score(0.2, 2, 0.1)
    t = level_thresholds([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert [level(x, t) for x in (0.1, 0.35, 0.6)] == ["easy", "middle", "hard"]
    with pytest.raises(ValueError):
        level_thresholds([])
