"""Difficulty levels, defined explicitly and model-free (the MPCC authors never published theirs).

ease = 0.6 * predictability + 0.2 * context + 0.2 * visibility, and difficulty_score = 1 - ease:

- predictability: the rank (1 = top, 0 = bottom) of the hidden category among all categories when
  they are scored by the visible context's co-occurrence statistics (mean of smoothed
  P(category | context category), leave-one-out for the image itself);
- context: number of other annotated instances in the image, saturating at 8;
- visibility: 1 - the hidden instance's area as a fraction of the image.

Levels cut the score at its 1/3 and 2/3 quantiles over the *training* build, stored with that build
(`mpcc_stats.json`), so eval levels do not move when the eval source changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LEVELS = ("easy", "middle", "hard")
WEIGHTS = {"predictability": 0.6, "context": 0.2, "visibility": 0.2}
CONTEXT_SATURATION = 8


def difficulty_score(predictability: float, num_context: int, area_frac: float) -> float:
    ease = (
        WEIGHTS["predictability"] * predictability
        + WEIGHTS["context"] * min(1.0, num_context / CONTEXT_SATURATION)
        + WEIGHTS["visibility"] * (1.0 - min(1.0, area_frac))
    )
    return round(1.0 - ease, 6)


def level_thresholds(scores: Sequence[float]) -> tuple[float, float]:
    if len(scores) == 0:
        raise ValueError("cannot derive difficulty thresholds from zero samples")
    low, high = np.quantile(np.asarray(scores, dtype=float), [1 / 3, 2 / 3])
    return float(low), float(high)


def level(score: float, thresholds: tuple[float, float]) -> str:
    if score < thresholds[0]:
        return "easy"
    return "middle" if score < thresholds[1] else "hard"
