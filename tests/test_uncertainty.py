"""Selective-prediction measures: hand-computed risk-coverage numbers, token entropy against a float64
reference, coefficient recovery of the interaction model, the vision veto on synthetic answers with and
without "blind" errors, the item split, and the report's shape."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from mpcc.errors import ValidationError
from mpcc.evaluation.grounding.uncertainty import (
    VETO_QUANTILES,
    aurc,
    fit_interaction,
    risk_coverage,
    selective_risk,
    split_halves,
    token_entropy,
    uncertainty_report,
    vision_veto,
)

# Ranked by confidence: 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (right), 0.5 (wrong).
CONFIDENCE = [0.7, 0.9, 0.5, 0.8, 0.6]
CORRECT = [True, True, False, False, True]


def test_risk_coverage_by_hand():
    coverage, risk = risk_coverage(CONFIDENCE, CORRECT)
    np.testing.assert_allclose(coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(risk, [0 / 1, 1 / 2, 1 / 3, 1 / 4, 2 / 5])


def test_aurc_by_hand():
    assert aurc(CONFIDENCE, CORRECT) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4 + 2 / 5) / 5)


@pytest.mark.parametrize(
    ("coverage", "expected"),
    [(0.2, 0.0), (0.4, 1 / 2), (0.5, 1 / 3), (0.6, 1 / 3), (0.9, 2 / 5), (1.0, 2 / 5), (0.01, 0.0)],
)
def test_selective_risk_keeps_ceil_of_coverage(coverage, expected):
    assert selective_risk(CONFIDENCE, CORRECT, coverage) == pytest.approx(expected)


def test_selective_risk_is_not_fooled_by_float_rounding():
    # 0.28 * 25 is 7.000000000000001: the 7 most confident are kept, not 8.
    correct = [True] * 7 + [False] * 18
    assert selective_risk(np.arange(25, 0, -1), correct, 0.28) == 0.0


def test_ties_keep_input_order():
    assert risk_coverage([0.5, 0.5, 0.5], [False, True, True])[1].tolist() == pytest.approx([1, 1 / 2, 1 / 3])
    assert risk_coverage([0.5, 0.5, 0.5], [True, True, False])[1].tolist() == pytest.approx([0, 0, 1 / 3])


def test_ties_keep_input_order_in_a_long_ranking():
    # 60 answers in two tied groups, interleaved: numpy's default (unstable) argsort scrambles these.
    confidence = np.tile([1.0, 0.0], 30)
    correct = np.random.default_rng(5).random(60) < 0.5
    expected = np.r_[np.arange(0, 60, 2), np.arange(1, 60, 2)]
    np.testing.assert_allclose(
        risk_coverage(confidence, correct)[1], np.cumsum(~correct[expected]) / np.arange(1, 61)
    )


def test_oracle_beats_random_when_some_answers_are_wrong():
    correct = np.array(CORRECT)
    oracle = aurc(correct.astype(float), correct)
    assert oracle == pytest.approx((0 + 0 + 0 + 1 / 4 + 2 / 5) / 5)
    assert oracle < np.mean(~correct)


@pytest.mark.parametrize(
    ("confidence", "correct", "match"),
    [
        ([], [], "non-empty"),
        ([0.1, 0.2], [True], "correct"),
        ([0.1, float("nan")], [True, False], "missing"),
        ([0.1, None], [True, False], "missing"),
        ([0.1, "x"], [True, False], "numbers"),
        ([0.1, 0.2], [True, 2], "booleans"),
    ],
)
def test_bad_input_is_named(confidence, correct, match):
    with pytest.raises(ValidationError, match=match):
        aurc(confidence, correct)


def test_coverage_out_of_range():
    with pytest.raises(ValidationError, match="coverage"):
        selective_risk(CONFIDENCE, CORRECT, 0.0)


def test_token_entropy_uniform_is_log_vocab():
    entropy = token_entropy(torch.zeros(2, 3, 7))
    assert entropy.shape == (2, 3)
    torch.testing.assert_close(entropy, torch.full((2, 3), math.log(7)))


def test_token_entropy_one_hot_is_zero():
    logits = torch.full((4, 11), float("-inf"))
    logits[torch.arange(4), torch.tensor([0, 3, 7, 10])] = 0.0
    assert token_entropy(logits).tolist() == [0.0] * 4


def test_token_entropy_matches_float64_reference():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 50, generator=generator, dtype=torch.float64) * 4
    p = torch.softmax(logits, dim=-1)
    reference = -(p * torch.log_softmax(logits, dim=-1)).sum(dim=-1)
    entropy = token_entropy(logits.to(torch.bfloat16))
    assert entropy.dtype == torch.float32
    torch.testing.assert_close(token_entropy(logits), reference.float(), rtol=1e-5, atol=1e-5)
    # bf16 logits are rounded before the entropy, so only close, but computed in float32 nonetheless.
    torch.testing.assert_close(entropy, reference.float(), rtol=0.05, atol=0.05)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def test_fit_interaction_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    n, b = 20000, (-0.5, 1.2, -0.8, 0.9)
    h, v = rng.normal(1.5, 0.7, n), rng.normal(0.3, 0.1, n)
    zh, zv = (h - h.mean()) / h.std(), (v - v.mean()) / v.std()  # the model's own standardisation
    wrong = rng.random(n) < sigmoid(b[0] + b[1] * zh + b[2] * zv + b[3] * zh * zv)
    model = fit_interaction(h, v, wrong)
    fitted = model.coefficients
    for name, expected in zip(("intercept", "entropy", "vision", "interaction"), b):
        assert fitted[name] == pytest.approx(expected, abs=0.1), name
    assert (model.entropy_mean, model.entropy_std) == pytest.approx((h.mean(), h.std()))
    x = np.column_stack([np.ones(5), zh[:5], zv[:5], zh[:5] * zv[:5]])
    np.testing.assert_allclose(model.predict(h[:5], v[:5]), sigmoid(x @ list(fitted.values())))


def test_fit_interaction_leaves_the_intercept_unpenalised():
    rng = np.random.default_rng(6)
    h, v = rng.normal(size=500), rng.normal(size=500)
    wrong = rng.random(500) < sigmoid(-1.0 + h)
    model = fit_interaction(h, v, wrong, ridge=1e9)
    assert max(abs(model.entropy), abs(model.vision), abs(model.interaction)) < 1e-5
    assert model.intercept == pytest.approx(math.log(wrong.mean() / (1 - wrong.mean())), abs=1e-6)


def test_log_loss_is_the_mean_negative_log_likelihood():
    rng = np.random.default_rng(7)
    h, v = rng.normal(size=300), rng.normal(size=300)
    wrong = rng.random(300) < sigmoid(h - v)
    model = fit_interaction(h, v, wrong)
    p = model.predict(h, v)
    expected = -np.mean(wrong * np.log(p) + (~wrong) * np.log(1 - p))
    assert model.log_loss(h, v, wrong) == pytest.approx(expected)


def test_fit_interaction_constant_vision_uses_std_one():
    rng = np.random.default_rng(1)
    h = rng.normal(size=200)
    model = fit_interaction(h, np.full(200, 0.4), rng.random(200) < sigmoid(h))
    assert model.vision_std == 1.0
    assert model.vision == 0.0 and model.interaction == 0.0  # the ridge holds an all-zero feature at 0
    assert np.all(np.isfinite(model.predict(h, np.full(200, 0.4))))


def test_fit_interaction_rejects_mismatched_lengths():
    with pytest.raises(ValidationError, match="vision"):
        fit_interaction([0.1, 0.2, 0.3], [0.1, 0.2], [True, False, True])


def test_vision_veto_by_hand():
    # Fit half: median entropy 0.5 (the mean would be 1.0), so answers 0 and 1 are confident; only
    # answer 0 (wrong) has low vision, and every q vetoes it alone, so the tie goes to q = 0.1
    # (threshold 0.15 by interpolation).
    fit_h, fit_v, fit_ok = [0.1, 0.2, 0.8, 2.9], [0.0, 1.0, 0.5, 0.5], [False, True, True, True]
    # Eval half: answers 0-2 are confident, only answer 0 has vision < 0.15 (0.2 would be vetoed by q >= 0.3).
    eval_h, eval_v, eval_ok = [0.1, 0.3, 0.4, 0.6], [0.1, 0.2, 0.9, 0.9], [False, False, True, True]
    result = vision_veto(
        fit_h + eval_h, fit_v + eval_v, fit_ok + eval_ok, [True] * 4 + [False] * 4, coverage=0.75
    )
    assert result.entropy_threshold == pytest.approx(0.5)
    assert result.vision_quantile == 0.1
    assert result.vision_threshold == pytest.approx(0.15)
    assert result.vetoed == 1
    assert result.without_veto == pytest.approx(2 / 3)  # keeps answers 0, 1, 2
    assert result.with_veto == pytest.approx(1 / 3)  # keeps answers 1, 2, 3


def test_vision_veto_thresholds_are_strict():
    # Every quantile of a constant fit vision is 0.5; answers exactly at a threshold are not vetoed.
    fit_h, fit_v = [0.1, 0.2, 0.8, 0.9], [0.5] * 4
    eval_h, eval_v = [0.5, 0.2, 0.3], [0.4, 0.5, 0.4]
    result = vision_veto(fit_h + eval_h, fit_v + eval_v, [True] * 7, [True] * 4 + [False] * 3)
    assert (result.entropy_threshold, result.vision_threshold, result.vetoed) == (0.5, 0.5, 1)


def test_vision_veto_lowers_risk_when_blind_answers_are_wrong():
    rng = np.random.default_rng(2)
    h, v = rng.random(4000), rng.random(4000)
    # Confident but not looking: mostly wrong; everything else mostly right.
    ok = rng.random(4000) >= np.where((h < 0.5) & (v < 0.3), 0.9, 0.1)
    result = vision_veto(h, v, ok, split_halves(range(4000)))
    assert result.vision_quantile in VETO_QUANTILES
    assert result.vetoed > 0
    assert result.with_veto < result.without_veto - 0.05


def test_vision_veto_does_not_help_when_vision_is_irrelevant():
    rng = np.random.default_rng(3)
    h, v = rng.random(4000), rng.random(4000)
    ok = rng.random(4000) >= 0.05 + 0.4 * h  # entropy is informative, vision independent of correctness
    result = vision_veto(h, v, ok, split_halves(range(4000)))
    assert result.with_veto >= result.without_veto - 0.02


def test_vision_veto_needs_both_halves():
    with pytest.raises(ValidationError, match="both sides"):
        vision_veto([0.1, 0.2], [0.1, 0.2], [True, False], [True, True])


def test_split_halves_is_crc32_parity():
    # Known crc32 parities: a stable assignment, not Python's seeded hash().
    ids = ["a", "d", "img_1", "img_4", "17", 17]
    assert split_halves(ids).tolist() == [False, True, False, True, True, True]


def test_split_halves_order_independent_and_keeps_items_together():
    ids = [f"item-{i}" for i in range(1000)]
    mask = split_halves(ids)
    assert 450 <= mask.sum() <= 550
    shuffled = ids * 3
    random.Random(0).shuffle(shuffled)
    expected = dict(zip(ids, mask.tolist()))
    assert split_halves(shuffled).tolist() == [expected[i] for i in shuffled]
    assert split_halves(ids).tolist() == mask.tolist()


def make_records(n_items: int, per_item: int, seed: int = 4) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for item in range(n_items):
        for _ in range(per_item):
            h, v = float(rng.random()), float(rng.random())
            records.append(
                {
                    "item_id": f"item-{item}",
                    "correct": bool(rng.random() >= 0.1 + 0.5 * h * (1 - v)),
                    "entropy_full": h,
                    "entropy_answer": h * 0.5 + float(rng.random()) * 0.2,
                    "evidence_share": v,
                }
            )
    return records


def assert_plain(value):
    """JSON types only: np.float64 passes json.dumps (it subclasses float), so check types directly."""
    if isinstance(value, dict):
        for v in value.values():
            assert_plain(v)
    elif isinstance(value, list):
        for v in value:
            assert_plain(v)
    else:
        assert value is None or type(value) in (bool, int, float), (value, type(value))


def test_report_keys_and_values():
    records = make_records(150, 2)
    records[0]["entropy_answer"] = None
    records[1]["entropy_answer"] = float("nan")
    records[2]["evidence_share"] = None
    report = uncertainty_report(records)
    json.dumps(report)
    assert_plain(report)
    assert report["n"] == 300
    assert report["n_fit"] + report["n_eval"] == 299
    assert set(report["aurc"]) == {"entropy_full", "entropy_answer", "interaction", "random", "oracle"}
    assert set(report["risk_at_coverage"]) == {
        "coverage",
        "entropy_full",
        "without_veto",
        "with_veto",
        "vetoed",
        "entropy_threshold",
        "vision_threshold",
        "vision_quantile",
    }
    assert set(report["interaction"]) == {
        "intercept",
        "entropy",
        "vision",
        "interaction",
        "heldout_log_loss",
        "aurc_entropy_full_eval_half",
        "n_fit",
        "n_eval",
    }

    correct = np.array([r["correct"] for r in records])
    entropy = np.array([r["entropy_full"] for r in records])
    answer = np.array([r["entropy_answer"] for r in records[2:]])
    assert report["aurc"]["entropy_full"] == pytest.approx(aurc(-entropy, correct))
    assert report["aurc"]["entropy_answer"] == pytest.approx(aurc(-answer, correct[2:]))
    assert report["aurc"]["random"] == pytest.approx(np.mean(~correct))
    assert report["aurc"]["oracle"] < report["aurc"]["random"]
    assert report["risk_at_coverage"]["entropy_full"] == pytest.approx(selective_risk(-entropy, correct))
    assert report["risk_at_coverage"]["vision_quantile"] in VETO_QUANTILES
    with_vision = [r for r in records if r["evidence_share"] is not None]
    fit = split_halves(r["item_id"] for r in with_vision)
    h, v = (np.array([r[key] for r in with_vision]) for key in ("entropy_full", "evidence_share"))
    ok = np.array([r["correct"] for r in with_vision])
    model = fit_interaction(h[fit], v[fit], ~ok[fit])
    assert report["aurc"]["interaction"] == pytest.approx(aurc(1 - model.predict(h[~fit], v[~fit]), ok[~fit]))
    assert report["interaction"]["heldout_log_loss"] == pytest.approx(
        model.log_loss(h[~fit], v[~fit], ~ok[~fit])
    )
    assert report["interaction"]["aurc_entropy_full_eval_half"] == pytest.approx(aurc(-h[~fit], ok[~fit]))
    assert (report["interaction"]["n_fit"], report["interaction"]["n_eval"]) == (fit.sum(), (~fit).sum())
    assert report["interaction"]["entropy"] > 0  # wrong answers were made likelier by high entropy

    full = report["curves"]["entropy_full"]
    assert len(full["coverage"]) == len(full["risk"]) == 101
    assert full["coverage"][0] == pytest.approx(1 / 300) and full["coverage"][-1] == 1.0
    assert full["risk"][-1] == pytest.approx(np.mean(~correct))
    assert len(report["curves"]["entropy_answer"]["coverage"]) == 101


def test_report_short_curve_keeps_every_point():
    report = uncertainty_report(make_records(20, 2))
    assert len(report["curves"]["entropy_full"]["coverage"]) == 40


def test_report_too_few_records_leaves_veto_and_interaction_out():
    report = uncertainty_report(make_records(20, 2), min_per_half=100)
    json.dumps(report)
    assert_plain(report)
    assert report["interaction"] is None
    assert report["aurc"]["interaction"] is None
    for key in (
        "without_veto",
        "with_veto",
        "vetoed",
        "entropy_threshold",
        "vision_threshold",
        "vision_quantile",
    ):
        assert report["risk_at_coverage"][key] is None
    assert report["risk_at_coverage"]["entropy_full"] is not None


def test_all_wrong_answers_leave_the_model_out_but_keep_the_veto():
    """An untrained model gets everything wrong: no P(wrong) model exists (its intercept would diverge),
    the veto and the AURCs are still reported."""
    records = [{**r, "correct": False} for r in make_records(60, 2)]
    report = uncertainty_report(records)
    assert report["interaction"] is None and report["aurc"]["interaction"] is None
    assert report["risk_at_coverage"]["with_veto"] == report["risk_at_coverage"]["without_veto"] == 1.0
    assert report["aurc"]["entropy_full"] == 1.0
    with pytest.raises(ValidationError, match="all right or all wrong"):
        fit_interaction([0.1, 0.2, 0.3], [0.5, 0.4, 0.3], [True, True, True])


def test_report_without_answer_entropy_or_vision():
    records = [
        {
            "item_id": i,
            "correct": i % 3 == 0,
            "entropy_full": i / 10,
            "entropy_answer": None,
            "evidence_share": None,
        }
        for i in range(10)
    ]
    report = uncertainty_report(records)
    assert report["aurc"]["entropy_answer"] is None and report["curves"]["entropy_answer"] is None
    assert (report["n_fit"], report["n_eval"], report["interaction"]) == (0, 0, None)


def test_report_rejects_empty_and_incomplete_records():
    with pytest.raises(ValidationError, match="no records"):
        uncertainty_report([])
    records = make_records(3, 1)
    del records[1]["entropy_full"]
    with pytest.raises(ValidationError, match="record 1 has no 'entropy_full'"):
        uncertainty_report(records)
