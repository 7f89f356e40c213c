"""The study's stages, in order: the demo's data stages (scenes, train and eval builds, preview), the
random-patch train build, the untrained model's eval, then per group of runs (the main table, the
ablations, the weak start) and per seed each run's training and eval, then the report.

Each stage is skipped when its output is complete (a model's `trainer_state.json`, an eval's
metrics.json), so re-running the same command resumes; the report is always written again from what is
there. Each stage's time goes to `timings.json`, which the report sums."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from mpcc.demo import NEW_TOKENS, START, data_stages, ready, run_stages, work_layout
from mpcc.demo_config import DemoConfig
from mpcc.evaluation.harness import METRICS
from mpcc.records import BUILD_FILE
from mpcc.study.arms import MAIN, WEAK, Arm, arms, read_facts, recipe_path
from mpcc.study.config import StudyConfig
from mpcc.study.data import layout, patch_train_set
from mpcc.study.outputs import REPORT_DIR, TIMINGS, ZERO_SHOT_SEED, eval_dir, model_dir
from mpcc.training.curves import STATE_FILE


def _model(out: Path, arm: Arm | None, seed: int) -> str:
    return START if arm is None else str(model_dir(out, arm.name, seed))


def _train(config: StudyConfig, table: dict[str, Arm], arm: Arm, seed: int, paths: dict[str, Path]) -> None:
    from mpcc.train import main as train_main

    start = table[arm.start] if arm.start else None
    train_main(
        [
            recipe_path(config.recipes, arm.recipe),
            "--model_name_or_path",
            _model(config.out, start, seed),
            "--dataset_path",
            str(paths[arm.data]),
            "--output_dir",
            str(model_dir(config.out, arm.name, seed)),
            "--max_steps",
            str(arm.steps),
            "--save_strategy",
            "no",
            "--seed",
            str(seed),
            *arm.overrides,
        ]
    )


def _evaluate(config: StudyConfig, model: str, out: Path, paths: dict[str, Path]) -> None:
    from mpcc.evaluation.config import EVAL_FORMATS, EvalConfig
    from mpcc.evaluation.harness import run_eval
    from mpcc.generation.decoding import Decoding

    eval_config = EvalConfig(
        formats=EVAL_FORMATS, limit=config.eval_items, decoding=Decoding(max_new_tokens=NEW_TOKENS)
    )
    run_eval(model, paths["eval"], out, eval_config)


def _timed(out: Path, key: str, work: Callable[[], object]) -> Callable[[], None]:
    """`work`, with its seconds recorded under `key` in timings.json."""

    def run() -> None:
        start = time.monotonic()
        work()
        file = out / TIMINGS
        timings = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
        timings[key] = round(time.monotonic() - start, 1)
        file.write_text(json.dumps(timings, indent=1) + "\n", encoding="utf-8")

    return run


def _run_stages(config: StudyConfig, table: dict[str, Arm], paths: dict[str, Path]) -> list:
    out = config.out
    zero = eval_dir(out, "zero_shot", ZERO_SHOT_SEED)
    stages = [
        (
            f"evaluate the untrained model {START} on {config.eval_items} items",
            zero,
            ready(zero, METRICS),
            _timed(out, "eval zero_shot", lambda: _evaluate(config, START, zero, paths)),
        )
    ]
    groups = [
        [a for a in MAIN if a in table],
        [a for a in table if a not in MAIN and a not in WEAK],
        [a for a in WEAK if a in table],
    ]
    for names in groups:
        for seed in config.seed_list:
            for name in names:
                arm = table[name]
                if arm.recipe is None:
                    continue
                where = model_dir(out, name, seed)
                start = arm.start or START
                stages.append(
                    (
                        f"{arm.label}, seed {seed}: {arm.recipe} from {start}, {arm.steps} steps",
                        where,
                        ready(where, STATE_FILE),
                        _timed(
                            out,
                            f"train {name} {seed}",
                            lambda a=arm, s=seed: _train(config, table, a, s, paths),
                        ),
                    )
                )
                if arm.evaluated:
                    target = eval_dir(out, name, seed)
                    stages.append(
                        (
                            f"evaluate {arm.label}, seed {seed}",
                            target,
                            ready(target, METRICS),
                            _timed(
                                out,
                                f"eval {name} {seed}",
                                lambda w=where, t=target: _evaluate(config, str(w), t, paths),
                            ),
                        )
                    )
    return stages


def run_study(config: StudyConfig) -> Path:
    """Run (or resume) every stage; the report's path."""
    import datasets

    from mpcc.study.report import write_report

    datasets.disable_progress_bars()
    table = arms(config, read_facts(config.recipes))
    paths = layout(config.out)
    demo = DemoConfig(out=config.out, num_images=config.num_images, seed=config.seed, recipes=config.recipes)
    stages = data_stages(demo, work_layout(config.out))
    if "masking" in config.ablations:
        stages.append(
            (
                "build the random-patch twin of the train set (same rows and traces, other pixels)",
                paths["train_patch"],
                ready(paths["train_patch"], BUILD_FILE),
                lambda: patch_train_set(config.out, config.seed, paths),
            )
        )
    stages += _run_stages(config, table, paths)
    report = config.out / REPORT_DIR
    stages.append(
        ("write the report and charts", report, lambda: False, lambda: write_report(config, table, paths))
    )
    run_stages(stages)
    print(f"report: {report / 'study.md'}", flush=True)
    return report / "study.md"
