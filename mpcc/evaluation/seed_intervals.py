"""Accuracy over several training seeds with a 95% interval that counts both sources of chance: a
percentile bootstrap that, in each resample, draws the seeds with replacement and the eval items (hidden
objects: all the answers about one travel together) with replacement, and takes the mean over the drawn
seeds of each seed's accuracy on the drawn items. With one seed it is the item bootstrap of
mpcc.evaluation.intervals.

Every run is evaluated on the same items, and every run uses the same draws (a run with fewer seeds
than the others, such as an untrained start model, uses the first draws' positions modulo its count):
a difference between two runs is computed per resample, so its interval is paired.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mpcc.evaluation.intervals import LEVEL, MIN_ANSWERS, RESAMPLES, Estimate

Records = Sequence[dict]


def groups_of(record: dict) -> list[str]:
    """The columns an answer counts in: `all`, its format, its level, and `ood` (a category held out of
    training) or `in`."""
    split = {True: "in", False: "ood"}.get(record.get("in_distribution"), "unknown")
    return ["all", record["format"], record.get("difficulty") or "unknown", split]


class SeedBootstrap:
    """Estimates and paired differences of runs' accuracies, from {run: {seed: scored answers}}."""

    def __init__(
        self,
        runs: Mapping[str, Mapping[int, Records]],
        seed: int = 0,
        resamples: int = RESAMPLES,
        level: float = LEVEL,
    ):
        self.runs = {name: dict(by_seed) for name, by_seed in runs.items() if by_seed}
        self.items = sorted(
            {r["item_id"] for by_seed in self.runs.values() for rs in by_seed.values() for r in rs}
        )
        self.index = {item: i for i, item in enumerate(self.items)}
        self.level = level
        rng = np.random.default_rng(seed)
        most = max((len(s) for s in self.runs.values()), default=1)
        self.seed_draws = rng.random((resamples, most))
        picks = rng.integers(0, len(self.items), size=(resamples, len(self.items)))
        self.weights = np.zeros((resamples, len(self.items)))
        np.add.at(self.weights, (np.arange(resamples)[:, None], picks), 1.0)
        self._cache: dict[tuple[str, str], tuple[float | None, np.ndarray, int]] = {}

    def _counts(self, run: str, group: str) -> tuple[np.ndarray, np.ndarray]:
        """(right, answered): seeds x items counts of the run's answers in `group`."""
        seeds = sorted(self.runs[run])
        right = np.zeros((len(seeds), len(self.items)))
        answered = np.zeros_like(right)
        for k, s in enumerate(seeds):
            for r in self.runs[run][s]:
                if group in groups_of(r):
                    answered[k, self.index[r["item_id"]]] += 1
                    right[k, self.index[r["item_id"]]] += bool(r["correct"])
        return right, answered

    def _draws(self, run: str, group: str) -> tuple[float | None, np.ndarray, int]:
        """(value, the statistic per resample (NaN where undefined), answers per seed)."""
        key = (run, group)
        if key not in self._cache:
            right, answered = self._counts(run, group)
            per_seed = answered.sum(1)
            value = float(np.mean(right.sum(1) / per_seed)) if per_seed.all() else None
            with np.errstate(invalid="ignore", divide="ignore"):
                accuracy = (self.weights @ right.T) / (self.weights @ answered.T)  # resamples x seeds
            k = len(per_seed)
            drawn = np.minimum((self.seed_draws[:, :k] * k).astype(int), k - 1)
            stat = np.take_along_axis(accuracy, drawn, axis=1).mean(1)
            self._cache[key] = (value, stat, int(per_seed.min()) if k else 0)
        return self._cache[key]

    def _estimate(self, value: float | None, stat: np.ndarray, n: int, items: int) -> Estimate:
        finite = stat[np.isfinite(stat)]
        if value is None or n < MIN_ANSWERS or items < 2 or len(finite) < len(stat) / 2:
            return Estimate(value, None, None, n, items)
        low, high = np.quantile(finite, [(1 - self.level) / 2, (1 + self.level) / 2])
        return Estimate(value, float(low), float(high), n, items)

    def _items(self, run: str, group: str) -> int:
        return int((self._counts(run, group)[1].sum(0) > 0).sum())

    def estimate(self, run: str, group: str) -> Estimate | None:
        """The run's mean accuracy over seeds in `group` with its interval (n: answers per seed); None when
        the run has no seed or the group no answer."""
        if run not in self.runs:
            return None
        value, stat, n = self._draws(run, group)
        return None if n == 0 else self._estimate(value, stat, n, self._items(run, group))

    def difference(self, a: str, b: str, group: str) -> Estimate | None:
        """Accuracy of run `a` minus run `b` in `group`, paired over the same draws."""
        if a not in self.runs or b not in self.runs:
            return None
        (va, sa, na), (vb, sb, nb) = self._draws(a, group), self._draws(b, group)
        if min(na, nb) == 0:
            return None
        value = None if va is None or vb is None else va - vb
        return self._estimate(value, sa - sb, min(na, nb), self._items(a, group))

    def per_seed(self, run: str, group: str = "all") -> dict[int, float]:
        """Each seed's accuracy in `group` on all the items."""
        right, answered = self._counts(run, group)
        seeds = sorted(self.runs[run])
        return {
            s: float(right[k].sum() / answered[k].sum()) for k, s in enumerate(seeds) if answered[k].sum()
        }
