"""Accuracy over seeds and items with a bootstrap that resamples both (mpcc.evaluation.seed_intervals),
and the study report's reading of it (mpcc.evaluation.study_tables): values, intervals, pairing, too few."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.evaluation.metrics import bootstrap_ci
from mpcc.evaluation.seed_intervals import SeedBootstrap, groups_of
from mpcc.evaluation.study_tables import chance_levels, per_seed_table, reading, verdict


def answers(right: list[int], level: str = "easy", ood_from: int | None = None) -> list[dict]:
    """Two answers (mc4, yesno) per item; item i right in both when right[i]."""
    out = []
    for i, ok in enumerate(right):
        for fmt in ("mc4", "yesno"):
            ood = ood_from is not None and i >= ood_from
            out.append(
                {
                    "item_id": f"i{i}",
                    "format": fmt,
                    "difficulty": level,
                    "in_distribution": not ood,
                    "correct": ok,
                }
            )
    return out


def pattern(p: float, n: int = 40, seed: int = 0) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).random(n) < p]


def test_one_seed_is_the_item_bootstrap():
    right = pattern(0.6)
    boot = SeedBootstrap({"a": {0: answers(right)}})
    est = boot.estimate("a", "all")
    assert est.value == pytest.approx(np.mean(right)) and est.n == 80 and est.items == 40
    reference = bootstrap_ci([[float(r)] * 2 for r in right])  # another draw of the same bootstrap
    assert est.low == pytest.approx(reference[0], abs=0.05) and est.high == pytest.approx(
        reference[1], abs=0.05
    )


def test_value_is_the_mean_over_seeds_and_seed_spread_widens_the_interval():
    same = {s: answers(pattern(0.5, seed=1)) for s in range(3)}
    spread = {s: answers(pattern(p, seed=1)) for s, p in enumerate((0.2, 0.5, 0.8))}
    boot = SeedBootstrap({"same": same, "spread": spread})
    assert boot.per_seed("spread") == {
        s: pytest.approx(np.mean(pattern(p, seed=1))) for s, p in enumerate((0.2, 0.5, 0.8))
    }
    assert boot.estimate("spread", "all").value == pytest.approx(
        np.mean(list(boot.per_seed("spread").values()))
    )
    width = {
        name: boot.estimate(name, "all").high - boot.estimate(name, "all").low for name in ("same", "spread")
    }
    assert width["spread"] > 1.5 * width["same"]


def test_differences_are_paired():
    right = pattern(0.5)
    better = [1 if k % 4 == 0 else r for k, r in enumerate(right)]  # right on a quarter more items
    boot = SeedBootstrap({"a": {0: answers(right)}, "b": {0: answers(better)}, "a2": {0: answers(right)}})
    self = boot.difference("a", "a2", "all")
    assert (self.value, self.low, self.high) == (0.0, 0.0, 0.0)  # the same answers: no spread at all
    gain = boot.difference("b", "a", "all")
    assert gain.value == pytest.approx(np.mean(better) - np.mean(right)) and gain.low > 0
    # unpaired intervals of the two overlap although the paired difference is clear
    assert boot.estimate("b", "all").low < boot.estimate("a", "all").high


def test_groups_and_too_few_answers():
    boot = SeedBootstrap({"a": {0: answers(pattern(0.5), ood_from=36)}, "z": {-1: answers([0] * 40)}})
    ood = boot.estimate("a", "ood")
    assert ood.items == 4 and ood.n == 8 and not ood.enough  # 8 answers < 16: no interval, no claim
    assert boot.estimate("a", "hard") is None and boot.estimate("missing", "all") is None
    assert boot.estimate("a", "mc4").n == 40 and boot.estimate("a", "easy").n == 80
    assert groups_of({"format": "open", "difficulty": "hard", "in_distribution": False}) == [
        "all", "open", "hard", "ood"
    ]  # fmt: skip
    # a run with one (shared) seed pairs with a seeded run
    assert boot.difference("a", "z", "all").value == pytest.approx(np.mean(pattern(0.5)))
    chance = chance_levels(answers([0] * 4, ood_from=2))  # one mc4 and one yes/no question per item
    assert chance["mc4"] == 0.25 and chance["ood"] == chance["all"] == pytest.approx((0.25 + 0.5) / 2)
    table = "\n".join(per_seed_table(boot, {"a": "A", "z": "Z"}, ["a", "z"], [0]))
    assert "| Z | 0.000 |" in table  # the untrained model's one eval stands for every seed


def test_reading_says_when_prior_sampling_does_not_beat_plain_grpo():
    base = pattern(0.25, n=60)  # at mc4's chance
    runs = {
        "zero_shot": {-1: answers([0] * 60)},
        "sft": {s: answers(base) for s in (0, 1)},
        "grpo": {s: answers(base) for s in (0, 1)},
        "prior_append": {s: answers(base) for s in (0, 1)},
        "prior_replace": {s: answers([1] * 60) for s in (0, 1)},
    }
    weak = {
        "weak_grpo": {
            0: {
                "reward_last": 0.0,
                "reward_peak": 0.0,
                "zero_variance_groups": 1.0,
                "reward_first": 0.0,
                "window": 10,
            }
        },
        "weak_prior": {
            0: {
                "reward_last": 0.0,
                "reward_peak": 0.2,
                "zero_variance_groups": 0.0,
                "reward_first": 0.0,
                "window": 10,
            }
        },
    }
    text = reading(SeedBootstrap(runs), weak, {"prior_replace": "R"})
    assert text.startswith("Reading: SFT is above zero-shot on every level measured")
    assert "no eval items at level middle, hard" in text
    assert "GRPO + prior (append) does not beat plain GRPO overall" in text
    assert "GRPO + prior (replace) beats plain GRPO overall (above:" in text
    assert "mc4 above chance (interval above 0.25): R;" in text  # the others sit at chance

    assert (
        "no reward variance in 100% of cases (prior sampling: 0%)" in text
        and "peaked at 0.000 vs 0.200" in text
    )
    assert "ended at 0.000 vs 0.000" in text
    assert verdict(None) == "not measured"
