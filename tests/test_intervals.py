"""The item bootstrap: calibrated, seeded, resampling items rather than answers, and honest about too
few answers."""

from __future__ import annotations

import numpy as np

from mpcc.evaluation.intervals import MIN_ANSWERS, item_bootstrap, item_bootstraps


def _mean(records):
    return float(np.mean([r["x"] for r in records]))


def _answers(values, per_item=1):
    return [{"item_id": i, "x": v} for i, v in enumerate(values) for _ in range(per_item)]


def test_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(200):
        data = _answers(rng.random(60) < 0.3)
        hits += item_bootstrap(data, _mean, seed=trial, resamples=300).covers(0.3)
    assert 0.88 <= hits / 200 <= 0.99  # a 95% interval (percentile bootstrap: slightly under on n=60)


def test_seeded_and_pure():
    data = _answers(np.linspace(0, 1, 40))
    assert item_bootstrap(data, _mean, seed=3) == item_bootstrap(data, _mean, seed=3)
    assert item_bootstrap(data, _mean, seed=3) != item_bootstrap(data, _mean, seed=4)


def test_answers_of_one_item_count_once():
    """Copying every answer four times (four formats of one item) must not narrow the interval."""
    values = np.random.default_rng(1).random(40)
    once = item_bootstrap(_answers(values), _mean)
    four = item_bootstrap(_answers(values, per_item=4), _mean)
    assert (once.items, four.items, four.n) == (40, 40, 160)
    assert abs((four.high - four.low) - (once.high - once.low)) < 0.02
    naive = item_bootstrap([{**r, "item_id": k} for k, r in enumerate(_answers(values, 4))], _mean)
    assert naive.high - naive.low < 0.6 * (four.high - four.low)  # what resampling answers would claim


def test_too_few_answers_or_an_undefined_statistic_give_no_interval():
    few = item_bootstrap(_answers(range(MIN_ANSWERS - 1)), _mean)
    assert few.value is not None and not few.enough and few.n == MIN_ANSWERS - 1

    def needs_two_positives(records):  # undefined on most resamples (P = 0.73), like an unfittable model
        return 1.0 if sum(r["x"] for r in records) == 2 else None

    rare = _answers([1, 1] + [0] * 98)
    assert needs_two_positives(rare) == 1.0 and not item_bootstrap(rare, needs_two_positives).enough
    assert item_bootstrap([], _mean).value is None


def test_several_statistics_share_their_resamples_and_equal_one_at_a_time():
    data = _answers(np.random.default_rng(2).random(50), per_item=2)

    def both(records):
        x = [r["x"] for r in records]
        return {"mean": float(np.mean(x)), "max": float(np.max(x)), "never": None}

    together = item_bootstraps(data, both, seed=5, resamples=200)
    assert together["mean"] == item_bootstrap(data, _mean, seed=5, resamples=200)
    assert together["max"] == item_bootstrap(data, lambda rs: both(rs)["max"], seed=5, resamples=200)
    assert together["never"].value is None and not together["never"].enough
    assert item_bootstraps([], both) == {}
