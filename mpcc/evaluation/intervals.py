"""Intervals for any statistic of a run's answers: a percentile bootstrap that resamples *items* (all the
answers to one item travel together, so an item asked in four formats is not counted as four pieces of
evidence), seeded, so a report is a pure function of its records.

A claim needs answers: below `MIN_ANSWERS` (or when fewer than half the resamples give the statistic a
value, e.g. a model that cannot be fit on a resample with no wrong answer) the estimate has no interval
and says so, and reports print "too few answers (n=...)" instead of a number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
MIN_ANSWERS = 16


@dataclass(frozen=True)
class Estimate:
    """A statistic on all answers with its bootstrap interval (`low`, `high`: None when too few)."""

    value: float | None
    low: float | None
    high: float | None
    n: int  # answers the statistic was computed on
    items: int  # distinct items among them: the unit resampled

    @property
    def enough(self) -> bool:
        return self.low is not None

    def as_dict(self) -> dict:
        return asdict(self)

    def covers(self, value: float) -> bool:
        return self.enough and self.low <= value <= self.high


def item_bootstrap(
    records: Sequence[dict],
    statistic: Callable[[list[dict]], float | None],
    *,
    item_key: str = "item_id",
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    min_answers: int = MIN_ANSWERS,
) -> Estimate:
    """`statistic(records)` with the percentile interval of `statistic` over `resamples` resamples of the
    items (with replacement); a statistic may return None where it is undefined (too few of a kind)."""
    records = list(records)
    groups: dict = {}
    for record in records:
        groups.setdefault(record[item_key], []).append(record)
    value = statistic(records) if records else None
    items = list(groups.values())
    if value is None or len(records) < min_answers or len(items) < 2:
        return Estimate(_float(value), None, None, len(records), len(items))
    rng = np.random.default_rng(seed)
    draws = []
    for picks in rng.integers(0, len(items), size=(resamples, len(items))):
        drawn = statistic([record for index in picks for record in items[index]])
        if drawn is not None and np.isfinite(drawn):
            draws.append(drawn)
    if len(draws) < resamples / 2:
        return Estimate(_float(value), None, None, len(records), len(items))
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(float(value), float(low), float(high), len(records), len(items))


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)
