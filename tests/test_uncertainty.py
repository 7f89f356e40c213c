"""Selective-prediction measures on arrays: hand-computed risk-coverage numbers and AUROCs, token entropy
against a float64 reference, coefficient recovery of the interaction model (and the sign of beta_EV on
confident-but-blind errors), the vision veto's rule on synthetic answers with and without "blind" errors,
and the item split. A run's report (per task, with intervals) is tests/test_monitor.py's."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from mpcc.errors import ValidationError
from mpcc.evaluation.grounding.uncertainty import (
    VETO_QUANTILES,
    VetoRule,
    aurc,
    auroc,
    choose_veto,
    fit_interaction,
    kept,
    risk_coverage,
    selective_risk,
    split_halves,
    token_entropy,
    veto_risk,
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


def test_auroc_by_hand_with_ties():
    # Wrong answers score 3, 2, 2; right ones 2, 1. The 3 beats both (2); each 2 ties the right 2 (0.5)
    # and beats the 1 (1): 5 of 6 pairs.
    score, wrong = [3, 2, 2, 2, 1], [True, True, True, False, False]
    expected = (2 + (0.5 + 1) + (0.5 + 1)) / 6
    assert auroc(score, wrong) == pytest.approx(expected)
    assert auroc([1, 2, 3], [False, False, True]) == 1.0 and auroc([1, 2, 3], [True, False, False]) == 0.0
    assert auroc([1, 2, 3], [True, True, True]) is None  # no right answer to tell apart


def test_auroc_matches_the_pairwise_definition():
    rng = np.random.default_rng(9)
    score, wrong = rng.integers(0, 6, 80).astype(float), rng.random(80) < 0.4
    pairs = [(a > b) + 0.5 * (a == b) for a in score[wrong] for b in score[~wrong]]
    assert auroc(score, wrong) == pytest.approx(np.mean(pairs))


def test_kept_is_ceil_of_coverage_and_at_least_one():
    assert [kept(25, 0.28), kept(10, 0.9), kept(10, 0.91), kept(10, 0.01), kept(3, 1.0)] == [7, 9, 10, 1, 3]


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
    correct = rng.random(n) < sigmoid(b[0] + b[1] * zh + b[2] * zv + b[3] * zh * zv)
    model = fit_interaction(h, v, correct)
    fitted = model.coefficients
    for name, expected in zip(("intercept", "entropy", "vision", "interaction"), b):
        assert fitted[name] == pytest.approx(expected, abs=0.1), name
    assert (model.entropy_mean, model.entropy_std) == pytest.approx((h.mean(), h.std()))
    x = np.column_stack([np.ones(5), zh[:5], zv[:5], zh[:5] * zv[:5]])
    np.testing.assert_allclose(model.predict(h[:5], v[:5]), sigmoid(x @ list(fitted.values())))


def test_beta_ev_is_negative_when_confident_blind_answers_fail_and_zero_when_vision_is_irrelevant():
    """The sign the paper gives beta_EV: negative where low entropy and low vision together mean wrong."""
    rng = np.random.default_rng(8)
    h, v = rng.random(8000), rng.random(8000)
    hazardous = rng.random(8000) >= np.where((h < 0.5) & (v < 0.3), 0.85, 0.05 + 0.3 * h)
    assert fit_interaction(h, v, hazardous).interaction < -0.3
    irrelevant = rng.random(8000) >= 0.05 + 0.4 * h
    assert abs(fit_interaction(h, v, irrelevant).interaction) < 0.1


def test_fit_interaction_leaves_the_intercept_unpenalised():
    rng = np.random.default_rng(6)
    h, v = rng.normal(size=500), rng.normal(size=500)
    correct = rng.random(500) < sigmoid(-1.0 + h)
    model = fit_interaction(h, v, correct, ridge=1e9)
    assert max(abs(model.entropy), abs(model.vision), abs(model.interaction)) < 1e-5
    assert model.intercept == pytest.approx(math.log(correct.mean() / (1 - correct.mean())), abs=1e-6)


def test_log_loss_is_the_mean_negative_log_likelihood():
    rng = np.random.default_rng(7)
    h, v = rng.normal(size=300), rng.normal(size=300)
    correct = rng.random(300) < sigmoid(h - v)
    model = fit_interaction(h, v, correct)
    p = model.predict(h, v)
    expected = -np.mean(correct * np.log(p) + (~correct) * np.log(1 - p))
    assert model.log_loss(h, v, correct) == pytest.approx(expected)


def test_fit_interaction_constant_vision_uses_std_one():
    rng = np.random.default_rng(1)
    h = rng.normal(size=200)
    model = fit_interaction(h, np.full(200, 0.4), rng.random(200) < sigmoid(h))
    assert model.vision_std == 1.0
    assert model.vision == 0.0 and model.interaction == 0.0  # the ridge holds an all-zero feature at 0
    assert np.all(np.isfinite(model.predict(h, np.full(200, 0.4))))


def test_fit_interaction_rejects_mismatched_lengths_and_one_kind_of_answer():
    with pytest.raises(ValidationError, match="vision"):
        fit_interaction([0.1, 0.2, 0.3], [0.1, 0.2], [True, False, True])
    with pytest.raises(ValidationError, match="all right or all wrong"):
        fit_interaction([0.1, 0.2, 0.3], [0.5, 0.4, 0.3], [True, True, True])


def test_vision_veto_by_hand():
    # Fit answers: median entropy 0.5 (the mean would be 1.0), so answers 0 and 1 are confident; only
    # answer 0 (wrong) has low vision, and every q vetoes it alone, so the tie goes to q = 0.1
    # (threshold 0.15 by interpolation).
    rule = choose_veto([0.1, 0.2, 0.8, 2.9], [0.0, 1.0, 0.5, 0.5], [False, True, True, True], coverage=0.75)
    assert rule == VetoRule(pytest.approx(0.5), pytest.approx(0.15), 0.1)
    # Evaluation answers: 0-2 are confident, only answer 0 has vision < 0.15 (q >= 0.3 would veto 0.2 too).
    h, v, ok = (
        np.array([0.1, 0.3, 0.4, 0.6]),
        np.array([0.1, 0.2, 0.9, 0.9]),
        np.array([False, False, True, True]),
    )
    vetoed = rule.vetoes(h, v)
    assert vetoed.tolist() == [True, False, False, False]
    assert selective_risk(-h, ok, 0.75) == pytest.approx(2 / 3)  # keeps answers 0, 1, 2
    assert veto_risk(h, vetoed, ok, 0.75) == pytest.approx(1 / 3)  # keeps answers 1, 2, 3


def test_vision_veto_thresholds_are_strict():
    # Every quantile of a constant fit vision is 0.5; answers exactly at a threshold are not vetoed.
    rule = choose_veto([0.1, 0.2, 0.8, 0.9], [0.5] * 4, [True] * 4)
    assert (rule.entropy_threshold, rule.vision_threshold) == (0.5, 0.5)
    assert rule.vetoes(np.array([0.5, 0.2, 0.3]), np.array([0.4, 0.5, 0.4])).tolist() == [False, False, True]


def _veto_on_halves(h, v, ok):
    fit = split_halves(range(h.size))
    rule = choose_veto(h[fit], v[fit], ok[fit])
    return (
        rule,
        selective_risk(-h[~fit], ok[~fit]),
        veto_risk(h[~fit], rule.vetoes(h[~fit], v[~fit]), ok[~fit]),
    )


def test_vision_veto_lowers_risk_when_blind_answers_are_wrong():
    rng = np.random.default_rng(2)
    h, v = rng.random(4000), rng.random(4000)
    # Confident but not looking: mostly wrong; everything else mostly right.
    ok = rng.random(4000) >= np.where((h < 0.5) & (v < 0.3), 0.9, 0.1)
    rule, without, with_veto = _veto_on_halves(h, v, ok)
    assert rule.vision_quantile in VETO_QUANTILES
    assert with_veto < without - 0.05


def test_vision_veto_does_not_help_when_vision_is_irrelevant():
    rng = np.random.default_rng(3)
    h, v = rng.random(4000), rng.random(4000)
    ok = rng.random(4000) >= 0.05 + 0.4 * h  # entropy is informative, vision independent of correctness
    _, without, with_veto = _veto_on_halves(h, v, ok)
    assert with_veto >= without - 0.02


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
