"""Intervals for any statistic of a run's answers: a percentile bootstrap that resamples *items* (all the
answers to one item travel together, so an item asked in four formats is not counted as four pieces of
evidence), seeded, so a report is a pure function of its records.

A claim needs answers: below `MIN_ANSWERS` (or when fewer than half the resamples give the statistic a
value, e.g. a model that cannot be fit on a resample with no wrong answer) the estimate has no interval
and says so, and reports print "too few answers (n=...)" instead of a number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import chain

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
    options = {"item_key": item_key, "seed": seed, "resamples": resamples, "level": level}
    estimates = item_bootstraps(records, lambda rs: {"": statistic(rs)}, min_answers=min_answers, **options)
    return estimates.get("", Estimate(None, None, None, 0, 0))  # no records


def item_bootstraps(
    records: Sequence[dict],
    statistics: Callable[[list[dict]], Mapping[str, float | None]],
    *,
    item_key: str = "item_id",
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    min_answers: int = MIN_ANSWERS,
) -> dict[str, Estimate]:
    """`item_bootstrap` of several statistics of the same records at once: `statistics(records)` gives
    them by name, and each resample is drawn and evaluated once for all (a table of measures costs one
    bootstrap, and shared work such as a ranking is done once per resample). Each estimate equals the
    `item_bootstrap` of its statistic alone with the same seed; a name missing from a resample's
    result counts as undefined there. No records: no estimates."""
    records = list(records)
    groups: dict = {}
    for record in records:
        groups.setdefault(record[item_key], []).append(record)
    values = dict(statistics(records)) if records else {}
    items = list(groups.values())
    defined = [name for name, value in values.items() if value is not None]
    if not defined or len(records) < min_answers or len(items) < 2:
        return {name: Estimate(_float(v), None, None, len(records), len(items)) for name, v in values.items()}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in defined}
    for picks in rng.integers(0, len(items), size=(resamples, len(items))).tolist():
        drawn = statistics(list(chain.from_iterable(map(items.__getitem__, picks))))
        for name in defined:
            value = drawn.get(name)
            if value is not None and math.isfinite(value):
                draws[name].append(value)
    estimates = {}
    for name, value in values.items():
        low = high = None
        if name in draws and len(draws[name]) >= resamples / 2:
            low, high = (float(q) for q in np.quantile(draws[name], [(1 - level) / 2, (1 + level) / 2]))
        estimates[name] = Estimate(_float(value), low, high, len(records), len(items))
    return estimates


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)
