"""The tables of `mpcc study`'s report (as accuracy_tables are the demo's): the paper's table in
miniature with seed-and-item intervals, the paired differences the reading rests on, the ablations'
tables, and a reading line that claims only what those intervals allow (mpcc.evaluation.seed_intervals)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mpcc.evaluation.accuracy_tables import CHANCE
from mpcc.evaluation.intervals import Estimate
from mpcc.evaluation.seed_intervals import Records, SeedBootstrap, groups_of
from mpcc.reports.tables import MISSING, fmt, markdown_table

LEVEL_COLUMNS = ("easy", "middle", "hard", "ood")  # all formats pooled
FORMAT_COLUMNS = ("mc4", "mc7", "yesno", "open")
COLUMNS = (*LEVEL_COLUMNS, *FORMAT_COLUMNS, "all")
DIFFERENCE_COLUMNS = (*LEVEL_COLUMNS, "all")


def cell(est: Estimate | None, signed: bool = False) -> str:
    """`value [low, high]`; `too few (n=N)` without an interval; MISSING without a value."""
    if est is None or est.value is None:
        return MISSING
    spec = "+.3f" if signed else ".3f"
    if not est.enough:
        return f"{est.value:{spec}} (too few: n={est.n})"
    return f"{est.value:{spec}} [{est.low:{spec}}, {est.high:{spec}}]"


def chance_levels(records: Records) -> dict[str, float]:
    """Each column's accuracy under a uniform guess: the mean, over the column's questions, of their
    format's chance (a pooled column mixes formats: five of an object's eight questions are yes/no)."""
    levels: dict[str, list[float]] = {}
    for r in records:
        for column in groups_of(r):
            levels.setdefault(column, []).append(CHANCE[r["format"]])
    return {column: sum(values) / len(values) for column, values in levels.items()}


def always_no(records: Records) -> float | None:
    """The yes/no accuracy of answering "no" every time (most yes/no questions name a wrong object)."""
    yesno = [r for r in records if r["format"] == "yesno"]
    return sum(r["answer"] == "no" for r in yesno) / len(yesno) if yesno else None


def accuracy_table(
    boot: SeedBootstrap, labels: Mapping[str, str], rows: Sequence[str], records: Records | None = None
) -> list[str]:
    """One row per run (mean over seeds [95% interval]) in every column; with one run's `records`, first
    the chance row (uniform guess per question; always "no" beside yes/no)."""
    lines = []
    if records:
        chance = chance_levels(records)
        cells = {c: fmt(chance.get(c)) for c in COLUMNS}
        cells["yesno"] += f' (always "no": {fmt(always_no(records))})'
        lines.append(("chance (uniform guess)", *cells.values(), "–"))
    for name in rows:
        if name in boot.runs:
            seeds = len(boot.runs[name])
            lines.append((labels[name], *(cell(boot.estimate(name, c)) for c in COLUMNS), seeds))
    return markdown_table(("run", *COLUMNS, "seeds"), lines)


def difference_table(
    boot: SeedBootstrap, labels: Mapping[str, str], pairs: Sequence[tuple[str, str]]
) -> list[str]:
    """One row per (a, b): accuracy of a minus b, paired over the same seed and item draws."""
    rows = [
        (
            f"{labels[a]} − {labels[b]}",
            *(cell(boot.difference(a, b, c), signed=True) for c in DIFFERENCE_COLUMNS),
        )
        for a, b in pairs
        if a in boot.runs and b in boot.runs
    ]
    return markdown_table(("difference", *DIFFERENCE_COLUMNS), rows)


def per_seed_table(
    boot: SeedBootstrap, labels: Mapping[str, str], rows: Sequence[str], seeds: Sequence[int]
) -> list[str]:
    """Each run's accuracy over all formats, seed by seed: the spread the intervals summarise. A run
    evaluated once for all seeds (the untrained model) shows that one value in every column."""
    body = []
    for name in rows:
        if name in boot.runs:
            values = boot.per_seed(name)
            shared = (
                next(iter(values.values())) if len(values) == 1 and not set(values) & set(seeds) else None
            )
            body.append((labels[name], *(fmt(values.get(s, shared)) for s in seeds)))
    return markdown_table(("run (all formats)", *(f"seed {s}" for s in seeds)), body)


def verdict(est: Estimate | None) -> str:
    """Above / below / no difference shown, from a difference's interval."""
    if est is None or est.value is None:
        return "not measured"
    if not est.enough:
        return f"{est.value:+.3f}, too few answers for an interval"
    where = "above" if est.low > 0 else "below" if est.high < 0 else "no difference shown (interval spans 0)"
    return f"{where}: {cell(est, signed=True)}"


def _window(summaries: Mapping[str, Mapping[int, dict]]) -> int:
    """How many logged steps each of the summaries' means covers (mpcc.study.report records it per run)."""
    return next((s["window"] for by_seed in summaries.values() for s in by_seed.values()), 10)


def weak_table(summaries: Mapping[str, Mapping[int, dict]], labels: Mapping[str, str]) -> list[str]:
    """Per weak-start run and seed: the generated samples' reward over the first, the best and the last
    logged steps and the share of groups with no reward variance (no GRPO signal)."""
    rows = []
    for name, by_seed in summaries.items():
        for seed, s in sorted(by_seed.items()):
            rows.append(
                (
                    labels[name],
                    seed,
                    fmt(s["reward_first"]),
                    fmt(s["reward_peak"]),
                    fmt(s["reward_last"]),
                    fmt(s["zero_variance_groups"]),
                )
            )
    window = _window(summaries)
    header = (
        "run",
        "seed",
        f"generated reward, first {window} logs",
        f"best {window} in a row",
        f"last {window} logs",
        "zero-variance groups",
    )
    return markdown_table(header, rows)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def weak_reading(summaries: Mapping[str, Mapping[int, dict]]) -> str | None:
    """One clause on the weak start: best- and last-window generated reward and zero-variance share, mean
    over seeds."""
    if not {"weak_grpo", "weak_prior"} <= set(summaries):
        return None
    runs = ("weak_grpo", "weak_prior")
    peak = {n: _mean([s["reward_peak"] for s in summaries[n].values()]) for n in runs}
    last = {n: _mean([s["reward_last"] for s in summaries[n].values()]) for n in runs}
    flat = {n: _mean([s["zero_variance_groups"] for s in summaries[n].values()]) for n in runs}
    return (
        "from the untrained model, plain GRPO's groups had no reward variance in "
        f"{fmt(flat['weak_grpo'], '.0%')} of cases (prior sampling: {fmt(flat['weak_prior'], '.0%')}) "
        f"and its generated reward peaked at {fmt(peak['weak_grpo'])} vs {fmt(peak['weak_prior'])} with "
        f"prior sampling (best {_window(summaries)} logs in a row) and ended at {fmt(last['weak_grpo'])} vs "
        f"{fmt(last['weak_prior'])} (mean over seeds, no interval)"
    )


def reading(
    boot: SeedBootstrap, summaries: Mapping[str, Mapping[int, dict]], labels: Mapping[str, str] | None = None
) -> str:
    """One line: SFT vs zero-shot per level, prior sampling vs plain GRPO overall and OOD, and the weak
    start, each as its paired interval allows."""
    parts = []
    if {"sft", "zero_shot"} <= set(boot.runs):
        diffs = {c: boot.difference("sft", "zero_shot", c) for c in ("easy", "middle", "hard")}
        lost = [c for c, d in diffs.items() if d is not None and not _above(d)]
        unmeasured = [c for c, d in diffs.items() if d is None]
        parts.append(
            f"SFT is not shown above zero-shot on: {', '.join(lost)}"
            if lost
            else "SFT is above zero-shot on every level measured (paired intervals above 0)"
        )
        if unmeasured:
            parts.append(f"no eval items at level {', '.join(unmeasured)}")
    for prior in ("prior_append", "prior_replace"):
        if {prior, "grpo"} <= set(boot.runs):
            overall, ood = boot.difference(prior, "grpo", "all"), boot.difference(prior, "grpo", "ood")
            mode = prior.split("_")[1]
            beats = _above(overall)
            parts.append(
                f"GRPO + prior ({mode}) {'beats' if beats else 'does not beat'} plain GRPO overall "
                f"({verdict(overall)}; OOD: {verdict(ood)})"
            )
    above = [n for n in boot.runs if _clear(boot.estimate(n, "mc4"), CHANCE["mc4"])]
    parts.append(
        f"mc4 above chance (interval above 0.25): {', '.join((labels or {}).get(n, n) for n in above)}"
        if above
        else 'no run\'s mc4 is above chance (0.25): the pooled columns rest on yes/no, where always "no" '
        "scores most"
    )
    weak = weak_reading(summaries)
    if weak:
        parts.append(weak)
    return "Reading: " + "; ".join(parts) + "." if parts else "Reading: no finished runs to compare."


def _above(est: Estimate | None) -> bool:
    return _clear(est, 0.0)


def _clear(est: Estimate | None, level: float) -> bool:
    """The estimate's interval lies wholly above `level`."""
    return est is not None and est.enough and est.low > level
