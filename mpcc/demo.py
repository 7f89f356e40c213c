"""The main job end to end on the embedded default, as a comparison of the methods.

Synthetic scenes (with reasoning traces written by the scene generator) -> MPCC train build in every
question format, traces imported and verified like any teacher's -> eval build -> preview -> SFT of a
tiny offline model on the traces -> from that SFT checkpoint, GRPO with prior sampling and plain GRPO
(same recipe settings, seed and steps) -> evaluation of the start model and the three results on the
same items (the trained ones also with a blank image) -> step-level grounding (crm, evidence) of all
four on the first items' open questions -> one comparison (accuracies with 95% intervals over items,
chance beside each format, by format, by level and on the held-out categories; what the reasoning reads
off the image, masked vs blank; the grounding tables; a one-line reading; learning curves of the
generated samples' reward) -> export of the prior-sampling checkpoint.

Each stage prints what it does, where its output goes and how long it took; it is skipped when its
output is already there, so re-running the demo resumes instead of redoing (the comparison, seconds of
reading the finished runs, is always made again).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mpcc.annotation.importing import ImportResult, import_traces
from mpcc.data.answer_options import OPTION_FORMATS
from mpcc.data.build import BuildConfig, build
from mpcc.data.masking import MaskSpec
from mpcc.data.preview import write_preview
from mpcc.data.synthetic import (
    OUTLINE_WORDS,
    SCENE_WORDS,
    SCENES,
    TRACES_FILE,
    generate_scenes,
    outline_word,
    scene_type,
)
from mpcc.demo_config import DemoConfig
from mpcc.evaluation.accuracy_tables import ReasoningCheck, demo_tables
from mpcc.evaluation.config import EVAL_FORMATS, EvalConfig
from mpcc.evaluation.harness import METRICS, compare_runs, read_metrics, read_predictions, run_eval
from mpcc.export import export
from mpcc.generation.decoding import Decoding
from mpcc.records import BUILD_FILE
from mpcc.reports.charts import ACCURACY_CHART, reward_curve_chart
from mpcc.reports.compare import COMPARISON
from mpcc.reports.eval_report import REPORT_HTML
from mpcc.reports.grounding import compare_grounding
from mpcc.reports.learning import LEARNING_CHART, learning_section
from mpcc.train import main as train_main
from mpcc.training.curves import generated_reward, learning_summary, log_history

START = "tiny:qwen2_5_vl"
# run name (also its recipe's name) -> (what the demo calls it, the run it starts from; None: START)
TRAINED = {
    "sft": ("SFT on the traces", None),
    "grpo_prior": ("GRPO with prior sampling", "sft"),
    "grpo": ("plain GRPO", "sft"),
}
EVALUATED = ("start", *TRAINED)  # each evaluated on the same items, compared in this order
LABELS = {"start": "start (random weights)", **{name: what for name, (what, _) in TRAINED.items()}}
# Trace completions take 48 tokens of the tiny tokenizer (median; 65 at the 99th percentile, up to 68):
# room for answers a little longer than the traces, in GRPO's samples and in the eval.
NEW_TOKENS = 96
TRAIN_FORMATS = ("open", *OPTION_FORMATS)  # one row per hidden object, its format drawn per object
VAL_SCENES = 120  # at most: about 230 hidden objects, more than the eval asks of them


Stage = tuple[str, Path, Callable[[], bool], Callable[[], object]]  # what, where, done, work


def run_stages(stages: list[Stage]) -> None:
    """Run (what, where, done, work) in order: a numbered line before each, its time after; a stage
    whose output is already there is reported and skipped."""
    for k, (what, where, done, work) in enumerate(stages, 1):
        head = f"[{k}/{len(stages)}] {what}"
        if done():
            print(f"{head}: already done, in {where}", flush=True)
            continue
        print(f"{head} -> {where}", flush=True)
        start = time.monotonic()
        work()
        print(f"[{k}/{len(stages)}] done in {time.monotonic() - start:.0f} s", flush=True)


def work_layout(out: Path) -> dict[str, Path]:
    """Every folder the demo writes but the scenes, by name (what `run_demo` returns)."""
    return {
        "build": out / "data" / "train_build",
        "train": out / "data" / "train",
        "eval": out / "data" / "eval",
        "preview": out / "preview",
        **{name: out / name for name in TRAINED},
        "compare": out / "compare",
        "export": out / "export",
        **{f"eval_{name}": out / "eval" / name for name in EVALUATED},
        **{f"grounding_{name}": out / "grounding" / name for name in EVALUATED},
    }


def _eval_runs(paths: dict[str, Path]) -> list[Path]:
    return [paths[f"eval_{name}"] for name in EVALUATED]


def _val_seed(config: DemoConfig) -> int:
    return config.seed + 1  # the held-out scenes are another draw


def _draw_scenes(config: DemoConfig) -> None:
    scenes = config.out / "scenes"
    generate_scenes(scenes / "train", num_images=config.num_images, seed=config.seed, traces=True)
    generate_scenes(
        scenes / "val", num_images=min(max(1, config.num_images // 2), VAL_SCENES), seed=_val_seed(config)
    )


def _reasoning_checks(config: DemoConfig) -> list[ReasoningCheck]:
    """What an answer's reasoning should read off the image, as the traces do, where the generator knows
    the truth for every held-out image: the scene type it opens with, and the hidden object's outline its
    mask shows ("the small boxy mask"), the cue multiple choice needs (benchmarks/scene_ceiling.py).
    Measures of seeing that need no right answer."""
    seed = _val_seed(config)

    def names_scene(answer: dict) -> bool:
        image_id = int(answer["item_id"].split("-")[0])
        return f"This is {SCENE_WORDS[scene_type(image_id, seed)]}" in answer["completion"]

    def names_outline(answer: dict) -> bool:
        return f"{outline_word(answer['category'])} mask" in answer["completion"]

    return [
        ReasoningCheck("the scene type (of six)", names_scene, 1 / len(SCENES)),
        ReasoningCheck("the mask's outline (of six)", names_outline, 1 / len(OUTLINE_WORDS)),
    ]


def traced_train_set(
    scenes: Path, build_dir: Path, out: Path, seed: int, mask: MaskSpec | None = None, num_proc: int = 0
) -> ImportResult:
    """The train build of generated `scenes` in every format (`TRAIN_FORMATS`; `mask`: how targets are
    hidden, the default when None) at `build_dir`, then the scenes' traces imported and verified into
    `out`; a build already there is kept (a resumed run imports only). Returns the import's result."""
    if not (build_dir / BUILD_FILE).is_file():
        config = BuildConfig("train", seed=seed, formats=TRAIN_FORMATS, mask=mask or MaskSpec())
        build(scenes / "instances.json", scenes / "images", build_dir, config, num_proc=num_proc)
    return import_traces(scenes / TRACES_FILE, build_dir, out)


def _train_set(config: DemoConfig, paths: dict[str, Path]) -> None:
    scenes = config.out / "scenes" / "train"
    imported = traced_train_set(scenes, paths["build"], paths["train"], config.seed)
    print(
        f"  traces: kept {imported.counts['kept']} of {imported.counts['rows']} rows "
        f"(rejected: {imported.counts['rejected'] or 'none'}); formats {', '.join(TRAIN_FORMATS)}",
        flush=True,
    )


def _eval_set(config: DemoConfig, paths: dict[str, Path]) -> None:
    scenes = config.out / "scenes" / "val"
    build(
        scenes / "instances.json",
        scenes / "images",
        paths["eval"],
        BuildConfig("eval", seed=config.seed, stats=paths["train"]),
    )


def _start(name: str, paths: dict[str, Path]) -> str:
    """The model run `name` starts from."""
    return START if TRAINED[name][1] is None else str(paths[TRAINED[name][1]])


def _train(name: str, steps: int, config: DemoConfig, paths: dict[str, Path]) -> None:
    train_main(
        [
            str(Path(config.recipes) / f"{name}.yaml"),  # a file, else a packaged recipe's name
            "--model_name_or_path",
            _start(name, paths),
            "--dataset_path",
            str(paths["train"]),
            "--output_dir",
            str(paths[name]),
            "--max_steps",
            str(steps),
            "--save_strategy",
            "no",
            "--seed",
            str(config.seed),
            *([] if name == "sft" else ["--max_completion_length", str(NEW_TOKENS)]),
        ]
    )


def _evaluate(name: str, config: DemoConfig, paths: dict[str, Path]) -> None:
    model = START if name == "start" else str(paths[name])
    eval_config = EvalConfig(
        formats=EVAL_FORMATS,
        # the image's share (masked vs blank), for the trained models: the random start answers nothing
        # either way (step-level grounding: `_ground`, on fewer items)
        diagnostics=() if name == "start" else ("blind",),
        limit=config.eval_items,
        decoding=Decoding(max_new_tokens=NEW_TOKENS),
    )
    run_eval(model, paths["eval"], paths[f"eval_{name}"], eval_config)


def _ground(config: DemoConfig, paths: dict[str, Path]) -> None:
    """CRM and evidence attention on the open questions of the first `grounding_items` items, for each
    model: the random start is the control that should show nothing."""
    eval_config = EvalConfig(
        formats=("open",),
        diagnostics=("crm", "evidence"),
        limit=min(config.grounding_items, config.eval_items),
        decoding=Decoding(max_new_tokens=NEW_TOKENS),
    )
    for name in EVALUATED:
        model = START if name == "start" else str(paths[name])
        run_eval(model, paths["eval"], paths[f"grounding_{name}"], eval_config)


def _grounding_lines(paths: dict[str, Path]) -> list[str]:
    """The four models' step-level grounding compared (mpcc.reports.grounding), when it was measured."""
    runs = {name: paths[f"grounding_{name}"] for name in EVALUATED}
    if not all((run / METRICS).is_file() for run in runs.values()):
        return []
    sections = {LABELS[name]: read_metrics(run)["grounding"] for name, run in runs.items()}
    return [*compare_grounding(sections, paths["compare"]), ""]


def _learning(paths: dict[str, Path]) -> dict[str, list[dict]]:
    """The GRPO runs' logged histories, by what the demo calls them."""
    return {TRAINED[name][0]: log_history(paths[name]) for name in ("grpo_prior", "grpo")}


def _tables(config: DemoConfig, paths: dict[str, Path]) -> list[str]:
    """The interval tables (by format with chance, by level, OOD, blank-image control) and the reading."""
    answers = {LABELS[name]: read_predictions(paths[f"eval_{name}"]) for name in EVALUATED}
    normal = {label: by["normal"] for label, by in answers.items()}
    blind = {label: by.get("blind", []) for label, by in answers.items()}
    return demo_tables(
        normal, blind, pair=(LABELS["grpo_prior"], LABELS["grpo"]), checks=_reasoning_checks(config)
    )


def _compare(config: DemoConfig, paths: dict[str, Path]) -> None:
    """compare.md of the four evals: the interval tables, the point-estimate tables and chart of `mpcc eval
    compare`, the GRPO runs' learning curves and their chart."""
    # overwrite: a comparison cut short before its curves is made again
    compared = compare_runs(_eval_runs(paths), paths["compare"], overwrite=True)
    histories = _learning(paths)
    point_estimates = compared.read_text(encoding="utf-8")
    learning = learning_section(learning_summary(histories), LEARNING_CHART)
    sections = [*_tables(config, paths), point_estimates, *_grounding_lines(paths), *learning]
    compared.write_text("\n".join(["# MPCC demo", "", *sections]) + "\n", encoding="utf-8")
    curves = {name: generated_reward(history) for name, history in histories.items()}
    reward_curve_chart(curves, paths["compare"] / LEARNING_CHART)


def _summary(config: DemoConfig, paths: dict[str, Path]) -> str:
    """The comparison's headline tables (with intervals) and learning curves, for the terminal."""
    return "\n".join(_tables(config, paths) + learning_section(learning_summary(_learning(paths))))


def ready(path: Path, marker: str) -> Callable[[], bool]:
    return lambda: (path / marker).is_file()


def data_stages(config: DemoConfig, paths: dict[str, Path]) -> list[Stage]:
    """Scenes, the train and eval builds and the preview."""
    scenes = config.out / "scenes"
    return [
        (
            "draw synthetic scenes (train with traces, held-out val)",
            scenes,
            lambda: (
                (scenes / "train" / TRACES_FILE).is_file() and (scenes / "val" / "instances.json").is_file()
            ),
            lambda: _draw_scenes(config),
        ),
        (
            "build the MPCC train set in every format and import the scenes' traces",
            paths["train"],
            ready(paths["train"], BUILD_FILE),
            lambda: _train_set(config, paths),
        ),
        (
            "build the MPCC eval set (levels from the train set's statistics)",
            paths["eval"],
            ready(paths["eval"], BUILD_FILE),
            lambda: _eval_set(config, paths),
        ),
        (
            "write a visual preview of the eval set",
            paths["preview"],
            ready(paths["preview"], "index.html"),
            lambda: write_preview(paths["eval"], paths["preview"], num=24, seed=config.seed),
        ),
    ]


def _model_stages(config: DemoConfig, paths: dict[str, Path]) -> list[Stage]:
    """The three trainings, the four evals, their comparison and the export."""
    steps = {"sft": config.sft_steps, "grpo_prior": config.grpo_steps, "grpo": config.grpo_steps}
    return [
        *[
            (
                f"{TRAINED[name][0]} from {_start(name, paths)}, {n} steps",
                paths[name],
                ready(paths[name], "trainer_state.json"),
                lambda name=name, n=n: _train(name, n, config, paths),
            )
            for name, n in steps.items()
        ],
        *[
            (
                f"evaluate {START if name == 'start' else name} on {config.eval_items} items",
                paths[f"eval_{name}"],
                ready(paths[f"eval_{name}"], METRICS),
                lambda name=name: _evaluate(name, config, paths),
            )
            for name in EVALUATED
        ],
        *(
            [
                (
                    f"measure step-level grounding (crm, evidence) of the four models on "
                    f"{config.grounding_items} items' open questions",
                    paths["grounding_grpo"],
                    ready(paths["grounding_grpo"], METRICS),
                    lambda: _ground(config, paths),
                )
            ]
            if config.grounding_items
            else []
        ),
        (  # never skipped: it only reads the finished runs (seconds), so a resumed demo's tables are
            # always those the installed mpcc computes
            "compare the four models",
            paths["compare"],
            lambda: False,
            lambda: _compare(config, paths),
        ),
        (
            "export the prior-sampling model with its eval results",
            paths["export"],
            ready(paths["export"], "config.json"),
            lambda: export(paths["grpo_prior"], paths["export"], eval_run=paths["eval_grpo_prior"]),
        ),
    ]


def run_demo(config: DemoConfig = DemoConfig()) -> dict[str, Path]:
    """Train scenes and held-out eval scenes (half as many, at most VAL_SCENES, another seed), as COCO has
    train and val; SFT of the tiny start model, then GRPO with prior sampling and plain GRPO from the SFT
    checkpoint, on the same train set; the start and the three results evaluated on the same `eval_items`
    items, and their step-level grounding on the first `grounding_items`; their comparison in
    `out/compare`; the prior-sampling checkpoint exported to `out/export`."""
    import datasets

    datasets.disable_progress_bars()  # the stage lines say what is built; the trainers keep their bars
    paths = work_layout(config.out)
    run_stages(data_stages(config, paths) + _model_stages(config, paths))
    print(_summary(config, paths), flush=True)
    print(
        f"comparison: {paths['compare'] / COMPARISON} (charts: {ACCURACY_CHART}, {LEARNING_CHART})\n"
        f"preview: {paths['preview'] / 'index.html'}; reports: {config.out / 'eval'}/*/{REPORT_HTML}",
        flush=True,
    )
    return paths
