"""The demo's headline tables: every accuracy with its 95% item-bootstrap interval and n, the chance level
beside each format, by format, by level and in- vs out-of-distribution (categories held out of training),
the blank-image control, and a one-line reading that claims only what the intervals allow.

Intervals resample hidden objects (mpcc.evaluation.metrics.bootstrap_ci): the eight answers about one
object share its image, so they are not eight pieces of evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mpcc.data.difficulty import LEVELS
from mpcc.evaluation.intervals import MIN_ANSWERS, Estimate, item_bootstrap
from mpcc.evaluation.metrics import SPLITS, bootstrap_ci
from mpcc.reports.tables import estimate, fmt, markdown_table

FORMATS = ("mc4", "mc7", "yesno", "open")
# A uniform guess: one letter of 4 or 7, yes or no, one of the 80 COCO names.
CHANCE = {"mc4": 1 / 4, "mc7": 1 / 7, "yesno": 1 / 2, "open": 1 / 80}
SPLIT_NAMES = {"in": "in distribution", "out": "held-out categories (OOD)"}

Records = Sequence[dict]


def _accuracy(records: Records) -> float | None:
    return sum(bool(r["correct"]) for r in records) / len(records) if records else None


def _groups(records: Records) -> dict[str, list[dict]]:
    """The answers overall, per format, per level (x format) and per split (x format), by name."""
    groups: dict[str, list[dict]] = {"all": list(records)}
    for r in records:
        level = r.get("difficulty") or "unknown"
        split = {True: "in", False: "out"}.get(r.get("in_distribution"), "unknown")
        for key in (r["format"], level, f"{level}/{r['format']}", split, f"{split}/{r['format']}"):
            groups.setdefault(key, []).append(r)
    return groups


def estimates(records: Records, seed: int = 0) -> dict[str, Estimate]:
    """The accuracy of every group with its interval over the group's items (metrics.bootstrap_ci); a
    group of fewer than MIN_ANSWERS answers gets no interval."""
    out = {}
    for name, rs in _groups(records).items():
        per_item: dict = {}
        for r in rs:
            per_item.setdefault(r["item_id"], []).append(float(r["correct"]))
        low = high = None
        if len(rs) >= MIN_ANSWERS and len(per_item) > 1:
            low, high = bootstrap_ci(list(per_item.values()), seed=seed)
        out[name] = Estimate(_accuracy(rs), low, high, len(rs), len(per_item))
    return out


def _cell(est: Mapping[str, Estimate], name: str) -> str:
    return estimate(est[name].as_dict()) if name in est else "–"


def _always_no(records: Records) -> float | None:
    yesno = [r for r in records if r["format"] == "yesno"]
    return sum(r["answer"] == "no" for r in yesno) / len(yesno) if yesno else None


def by_format(runs: Mapping[str, Mapping[str, Estimate]], records: Records) -> list[str]:
    """Chance first, then each run: accuracy per format and overall."""
    no = _always_no(records)
    chance = [fmt(CHANCE[f]) for f in FORMATS]
    chance[FORMATS.index("yesno")] += f' (always "no": {fmt(no)})' if no is not None else ""
    rows = [("chance (uniform guess)", *chance, "–")]
    rows += [(name, *(_cell(est, f) for f in FORMATS), _cell(est, "all")) for name, est in runs.items()]
    return [
        "## Accuracy by format (95% interval over items, n answers)",
        "",
        *markdown_table(("run", *FORMATS, "all"), rows),
    ]


def by_group(title: str, keys: Mapping[str, str], runs: Mapping[str, Mapping[str, Estimate]]) -> list[str]:
    """One row per (group, run): accuracy per format and overall within the group."""
    rows = [
        (label, name, *(_cell(est, f"{key}/{f}") for f in FORMATS), _cell(est, key))
        for key, label in keys.items()
        for name, est in runs.items()
    ]
    return [f"## {title}", "", *markdown_table(("", "run", *FORMATS, "all"), rows)]


def blind_control(
    runs: Mapping[str, Mapping[str, Estimate]], blind: Mapping[str, Mapping[str, Estimate]]
) -> list[str]:
    """Accuracy with the masked image and with a blank one (the `blind` diagnostic): what the image adds."""
    rows = [
        (name, _cell(est, "mc4"), _cell(blind[name], "mc4"), _cell(est, "all"), _cell(blind[name], "all"))
        for name, est in runs.items()
        if name in blind
    ]
    header = ("run", "mc4, masked image", "mc4, blank image", "all, masked image", "all, blank image")
    return ["## The image's share: masked image vs a blank one", "", *markdown_table(header, rows)]


@dataclass(frozen=True)
class ReasoningCheck:
    """Something an answer's reasoning should read off the image, where the truth is known (the synthetic
    scenes' type): accuracy at this size can stay at chance while the reasoning already sees."""

    what: str  # e.g. "the scene type"
    passes: Callable[[dict], bool]  # (a scored answer) -> its reasoning reads it right
    chance: float  # the share a uniform guess gets


Shares = Mapping[str, tuple[Estimate, Estimate]]  # run -> (masked image, blank image)


def reasoning_shares(
    check: ReasoningCheck, normal: Mapping[str, Records], blind: Mapping[str, Records], seed: int = 0
) -> dict[str, tuple[Estimate, Estimate]]:
    """Per run with a blank-image control, the share of answers whose reasoning passes `check` with the
    masked image and with a blank one, each with its interval over items."""

    def share(records: list[dict]) -> float | None:
        return sum(r["passes"] for r in records) / len(records) if records else None

    def estimate(records: Records) -> Estimate:  # each answer checked once, not once per resample
        checked = [{"item_id": r["item_id"], "passes": check.passes(r)} for r in records]
        return item_bootstrap(checked, share, seed=seed)

    return {name: (estimate(rs), estimate(blind[name])) for name, rs in normal.items() if blind.get(name)}


def reasoning_table(check: ReasoningCheck, shares: Shares) -> list[str]:
    rows = [("chance (uniform guess)", fmt(check.chance), fmt(check.chance))]
    rows += [(name, estimate(a.as_dict()), estimate(b.as_dict())) for name, (a, b) in shares.items()]
    header = ("run", "masked image", "blank image")
    return [f"## What the reasoning reads off the image: {check.what}", "", *markdown_table(header, rows)]


def _above(a: Estimate, b: Estimate) -> bool:
    return a.enough and b.enough and a.low > b.high


def _versus(a: Estimate, b: Estimate) -> str:
    if _above(a, b):
        return "is above"
    return "is below" if _above(b, a) else "does not differ from (intervals overlap)"


def reading(
    runs: Mapping[str, Mapping[str, Estimate]],
    blind: Mapping[str, Mapping[str, Estimate]],
    pair: tuple[str, str] | None = None,
    reads: Sequence[tuple[str, Shares]] = (),
) -> str:
    """One line from the intervals: which runs' mc4 lies above chance, how the two runs of `pair` (prior
    sampling, plain GRPO) compare overall, which runs beat their blank-image control (in accuracy, and in
    what their reasoning reads off the image: `reads` = (ReasoningCheck.what, its shares) per check), and
    how wide the OOD intervals are. A difference whose intervals overlap is reported as none shown."""
    above = [n for n, e in runs.items() if "mc4" in e and e["mc4"].enough and e["mc4"].low > CHANCE["mc4"]]
    parts = [
        f"mc4 above chance (interval above 0.25): {', '.join(above)}"
        if above
        else "no run's mc4 is above chance"
    ]
    if pair and set(pair) <= set(runs):
        parts.append(f"{pair[0]} {_versus(runs[pair[0]]['all'], runs[pair[1]]['all'])} {pair[1]} overall")
    used = [n for n in runs if n in blind and _above(runs[n]["all"], blind[n]["all"])]
    parts.append(
        f"accuracy with the masked image above the blank image's for: {', '.join(used)}"
        if used
        else "no run's accuracy is shown to use the image"
    )
    for what, shares in reads:
        seen = [n for n, (a, b) in shares.items() if _above(a, b)]
        claim = f"names {what} more often with the masked image than with a blank one"
        parts.append(f"reasoning {claim}: {', '.join(seen)}" if seen else f"no run's reasoning {claim}")
    ood = [e["out"] for e in runs.values() if "out" in e and e["out"].enough]
    if ood:
        widest = max(e.high - e.low for e in ood)
        parts.append(f"OOD intervals up to {widest:.2f} wide ({ood[0].items} held-out items)")
    return "Reading: " + "; ".join(parts) + "."


def demo_tables(
    normal: Mapping[str, Records],
    blind: Mapping[str, Records],
    pair: tuple[str, str] | None = None,
    seed: int = 0,
    checks: Sequence[ReasoningCheck] = (),
) -> list[str]:
    """The markdown sections, from each run's scored answers (sample 0) with the masked and the blank
    image; `pair` names the two runs the reading compares (prior sampling, plain GRPO); each of `checks`
    adds what the reasoning reads off the image, masked vs blank."""
    runs = {name: estimates(rs, seed) for name, rs in normal.items()}
    shares = [(check, reasoning_shares(check, normal, blind, seed)) for check in checks]
    blanks = {name: estimates(rs, seed) for name, rs in blind.items() if rs}
    first = next(iter(normal.values()), [])
    levels = {level: level for level in LEVELS}
    splits = {split: SPLIT_NAMES[split] for split in SPLITS}
    return [
        reading(runs, blanks, pair, [(check.what, by_run) for check, by_run in shares]),
        "",
        *by_format(runs, first),
        *by_group("Accuracy by level", levels, runs),
        *by_group("In distribution vs held-out categories (OOD)", splits, runs),
        *(blind_control(runs, blanks) if blanks else []),
        *(line for check, by_run in shares for line in reasoning_table(check, by_run)),
    ]
