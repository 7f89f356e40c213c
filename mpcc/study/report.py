"""Write `report/study.md` and its charts from the study's finished runs (whatever is finished: a study
cut short reports what it has, and says how many seeds each row holds)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from mpcc.evaluation.seed_intervals import SeedBootstrap, groups_of
from mpcc.evaluation.study_tables import (
    COLUMNS,
    LEVEL_COLUMNS,
    accuracy_table,
    chance_levels,
    difference_table,
    per_seed_table,
    reading,
    weak_table,
)
from mpcc.reports.charts import interval_bars_chart, seed_band_chart
from mpcc.reports.tables import markdown_table
from mpcc.study.arms import MAIN, MASKING, WEAK, WEAK_GROUPS, WEAK_LEARNING_RATE, Arm
from mpcc.study.config import StudyConfig
from mpcc.study.data import exposure, target_categories
from mpcc.study.outputs import REPORT_DIR, TIMINGS, collect
from mpcc.training.curves import generated_reward, learning_summary

REPORT = "study.md"
CHARTS = {
    "accuracy": "accuracy.png",
    "ablations": "ablations_accuracy.png",
    "curves": "learning_curves.png",
    "weak": "weak_start.png",
}

DEFINITIONS = f"""## What the rows and columns are

- **zero-shot = prompt-only**: the untrained start model asked the eval's questions with the eval's
  prompt (the reasoning format and the options). The start model has random weights, so a prompt alone
  cannot switch anything on: "prompt-only" would be the same model with the same prompt, and the two
  rows are one. It is evaluated once (no training, greedy answers) and shared by every seed.
- **SFT**: the start model trained on the scenes' reasoning traces; **GRPO**: plain GRPO from that SFT
  model (the recipe's group size); **GRPO + prior (append)**: prior sampling as the authors' code does it
  (the recipe's G generated samples + the trace in each group); **GRPO + prior (replace)**: as the
  paper's text says (the trace replaces one of the G: G - 1 generated). Same seed, data and steps.
- **easy / middle / hard**: the eval build's difficulty levels; **ood**: hidden objects of the
  categories held out of every training build (checked below); each pools all formats. Five of an
  object's eight questions are yes/no, where answering "no" every time scores about 0.8, so a pooled
  column is read against the chance row (a uniform guess per question) and the other rows, never 0.
- **Intervals**: 95% percentile bootstrap over seeds *and* items: each of 1000 resamples draws the seeds
  with replacement and the hidden objects with replacement (the eight questions about one object travel
  together), and averages the drawn seeds' accuracies. Differences are paired (same draws for both
  runs). With a few seeds the seed part is coarse: the per-seed table shows the spread itself.
- **random patches** (ablation a): the train set's twin whose hidden region is a rectangle of exactly
  the object's mask area at a seeded spot on the object (`--mask-mode random_patch`, mpcc.data.masking):
  part of the object shows, its outline does not; question, answer and trace unchanged. Both runs are
  evaluated on the same semantic-mask eval set.
- **weak start** (ablation c): plain GRPO and GRPO + prior (append) from the untrained model, with the
  settings `benchmarks/learning_curve.py` measured the mechanism with ({WEAK_GROUPS} groups a step,
  learning rate {WEAK_LEARNING_RATE} constant); no eval, the generated samples' reward and the share of
  groups without reward variance.
"""


def _summaries(histories: dict[str, dict[int, list[dict]]]) -> dict[str, dict[int, dict]]:
    out = {}
    for name, by_seed in histories.items():
        summary = learning_summary(by_seed)
        out[name] = {s: r | {"window": summary["window"]} for s, r in summary["runs"].items()}
    return out


def _ood_lines(answers: dict, paths: dict[str, Path]) -> list[str]:
    """Which categories the OOD column holds, whether any training row has one as its target (it must
    not), and how often training rows show them otherwise."""
    records = [r for by_seed in answers.values() for rs in by_seed.values() for r in rs]
    ood = {r["category"] for r in records if "ood" in groups_of(r)}
    items = len({r["item_id"] for r in records if "ood" in groups_of(r)})
    trained = set().union(
        *(target_categories(paths[n]) for n in ("train", "train_patch") if paths[n].is_dir())
    )
    clash = sorted(ood & trained)
    check = (
        f"**but {', '.join(clash)} are training targets**" if clash else "none of them is a training target"
    )
    seen = exposure(paths["train"], ood) if ood else None
    lines = [
        "## The OOD column",
        "",
        f"Hidden objects held out: {items}, of the categories {', '.join(sorted(ood)) or 'none'}; {check} "
        f"(checked against the {len(trained)} target categories of the train builds).",
    ]
    if seen:
        lines.append(
            "Held out as targets only, as COCO's held-out categories are: of the "
            f"{seen['rows']} training rows, {seen['context']} show one as a visible context object, "
            f"{seen['options']} offer one as an answer option and {seen['trace']} name one in their "
            "reasoning trace."
        )
    return [*lines, ""]


def command(config: StudyConfig) -> str:
    """The `mpcc study` command line that gives `config`: the options that differ from the defaults."""
    flags = []
    for f in fields(config):
        value = getattr(config, f.name)
        if value != f.default:
            flags.append(
                f"--{f.name.replace('_', '-')} {','.join(value) if isinstance(value, tuple) else value}"
            )
    return " ".join(["mpcc study", *flags])


def _settings(config: StudyConfig) -> list[str]:
    rows = [(f"--{f.name.replace('_', '-')}", getattr(config, f.name)) for f in fields(config)]
    rows = [(flag, ",".join(v) if isinstance(v, tuple) else v) for flag, v in rows]
    return ["## Settings", "", *markdown_table(("option", "value"), rows)]


def _timings(out: Path) -> list[str]:
    file = out / TIMINGS
    if not file.is_file():
        return []
    timings = json.loads(file.read_text(encoding="utf-8"))
    train = sum(v for k, v in timings.items() if k.startswith("train "))
    evals = sum(v for k, v in timings.items() if k.startswith("eval "))
    return [
        "Time (this machine, the runs done by the study's commands so far): training "
        f"{train / 60:.1f} min, evaluation {evals / 60:.1f} min ({len(timings)} trainings and evals; each "
        f"in `{TIMINGS}`; data stages not counted).",
        "",
    ]


def _charts(
    out: Path, boot: SeedBootstrap, labels: dict, histories: dict, table: dict[str, Arm], chance: dict
) -> None:
    def cells(names, columns):
        return {
            labels[n]: {c: (e.as_dict() if (e := boot.estimate(n, c)) else None) for c in columns}
            for n in names
            if n in boot.runs
        }

    interval_bars_chart(cells(MAIN, list(COLUMNS)), list(COLUMNS), out / CHARTS["accuracy"], chance)
    ablation = ["sft", MASKING["sft"], "prior_append", MASKING["prior_append"]]
    ablation += [n for n in table if n.startswith("no_")]
    interval_bars_chart(
        cells(ablation, [*LEVEL_COLUMNS, "all"]), [*LEVEL_COLUMNS, "all"], out / CHARTS["ablations"], chance
    )

    def curves(names):
        return {
            labels[n]: {s: generated_reward(h) for s, h in histories[n].items()}
            for n in names
            if histories.get(n)
        }

    seed_band_chart(curves([n for n in MAIN if n in histories]), out / CHARTS["curves"], "generated reward")
    if any(histories.get(n) for n in WEAK):
        seed_band_chart(curves(WEAK), out / CHARTS["weak"], "generated reward")


def write_report(config: StudyConfig, table: dict[str, Arm], paths: dict[str, Path]) -> Path:
    """study.md and the charts in `out/report` from the finished runs; its path."""
    out = config.out / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    answers, histories = collect(config, table)
    boot = SeedBootstrap(answers)
    labels = {name: arm.label for name, arm in table.items()}
    summaries = _summaries(histories)
    first = next((rs for by_seed in answers.values() for rs in by_seed.values() if rs), [])  # same questions
    _charts(out, boot, labels, histories, table, chance_levels(first))
    masking = [n for pair in MASKING.items() for n in pair]
    rewards = ["prior_append", *[n for n in table if n.startswith("no_")]]
    lines = [
        "# MPCC in miniature: the paper's table and its first ablations",
        "",
        f"`{command(config)}` (all options below). Synthetic scenes; every model is evaluated on the same "
        "items in every format, greedy answers.",
        "",
        reading(boot, {n: summaries[n] for n in WEAK if n in summaries}, labels),
        "",
        *_timings(config.out),
        "## The table (mean over seeds [95% interval over seeds and items])",
        "",
        *accuracy_table(boot, labels, MAIN, first),
        f"![accuracy with intervals]({CHARTS['accuracy']})",
        "",
        "## Paired differences (accuracy, all formats pooled)",
        "",
        *difference_table(
            boot,
            labels,
            [
                ("sft", "zero_shot"),
                ("grpo", "sft"),
                ("prior_append", "sft"),
                ("prior_append", "grpo"),
                ("prior_replace", "grpo"),
                ("prior_append", "prior_replace"),
            ],
        ),
        "## Seed by seed",
        "",
        *per_seed_table(boot, labels, [n for n in table if n in boot.runs], config.seed_list),
        "## Learning curves of the GRPO runs (band: lowest to highest seed)",
        "",
        *_summary_table(summaries, labels, [n for n in MAIN if n in summaries]),
        f"![learning curves]({CHARTS['curves']})",
        "",
    ]
    if MASKING["sft"] in table:
        lines += [
            "## Ablation (a): semantic masks vs random patches of the same area",
            "",
            *accuracy_table(boot, labels, masking),
            *difference_table(boot, labels, list(MASKING.items())),
        ]
    if len(rewards) > 1:
        lines += [
            "## Ablation (b): each reward component removed (GRPO + prior (append))",
            "",
            *accuracy_table(boot, labels, rewards),
            *difference_table(boot, labels, [("prior_append", n) for n in rewards[1:]]),
        ]
    if MASKING["sft"] in table or len(rewards) > 1:
        lines += [f"![ablations' accuracy]({CHARTS['ablations']})", ""]
    if any(n in summaries for n in WEAK):
        lines += [
            "## Ablation (c): prior sampling from a weak start",
            "",
            *weak_table({n: summaries[n] for n in WEAK if n in summaries}, labels),
            f"![weak start]({CHARTS['weak']})",
            "",
        ]
    lines += [*_ood_lines(answers, paths), DEFINITIONS, *_settings(config)]
    report = out / REPORT
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _summary_table(summaries: dict, labels: dict, names: list[str]) -> list[str]:
    return weak_table({n: summaries[n] for n in names}, labels)
