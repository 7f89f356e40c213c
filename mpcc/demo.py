"""The main job end to end on the embedded default, as a comparison of the methods.

Synthetic scenes (with reasoning traces written by the scene generator) -> MPCC train build in every
question format, traces imported and verified like any teacher's -> eval build -> preview -> SFT of a
tiny offline model on the traces -> from that SFT checkpoint, GRPO with prior sampling and plain GRPO
(same recipe settings, seed and steps) -> evaluation of the start model and the three results on the
same items -> one comparison (chart and tables by format and level, learning curves of the generated
samples' reward) -> export of the prior-sampling checkpoint.

Each stage prints what it does, where its output goes and how long it took; it is skipped when its
output is already there, so re-running the demo resumes instead of redoing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mpcc.annotation.importing import import_traces
from mpcc.data.answer_options import FORMATS
from mpcc.data.build import BuildConfig, build
from mpcc.data.preview import write_preview
from mpcc.data.render import BUILD_FILE
from mpcc.data.synthetic import TRACES_FILE, generate_scenes
from mpcc.evaluation.config import EVAL_FORMATS, EvalConfig
from mpcc.evaluation.harness import METRICS, compare_runs, compared_metrics, run_eval
from mpcc.export import export
from mpcc.generation.decoding import Decoding
from mpcc.options import option
from mpcc.reports.charts import ACCURACY_CHART, reward_curve_chart
from mpcc.reports.compare import COMPARISON, accuracy_by_format
from mpcc.reports.eval_report import REPORT_HTML
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
# Trace completions take 48 tokens of the tiny tokenizer (median; 64 at the 99th percentile, up to 69):
# room for answers a little longer than the traces, in GRPO's samples and in the eval.
NEW_TOKENS = 96


@dataclass(frozen=True)
class DemoConfig:
    """`mpcc demo`: synthetic scenes with reasoning traces -> MPCC train set in every format (traces
    imported and verified) + eval set -> preview -> SFT of a tiny offline model (CPU), then from it GRPO
    with prior sampling and plain GRPO -> eval of all four on the same items -> comparison -> export."""

    out: Path = option(Path("runs/demo"), "work directory")
    num_images: int = option(240, "synthetic scenes", minimum=2)
    seed: int = option(0, "seed", minimum=0)
    sft_steps: int = option(150, "SFT steps on the traces", minimum=1)
    grpo_steps: int = option(100, "steps of each GRPO run (with prior sampling, plain)", minimum=1)
    eval_items: int = option(60, "eval items (hidden objects), each asked in every format", minimum=1)
    recipes: str = option(
        "tiny", "where sft.yaml, grpo_prior.yaml and grpo.yaml are: a directory, or a packaged recipe folder"
    )


def _stages(stages: list[tuple[str, Path, Callable[[], bool], Callable[[], object]]]) -> None:
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


def run_demo(
    out: str | Path = DemoConfig.out,
    num_images: int = DemoConfig.num_images,
    seed: int = DemoConfig.seed,
    sft_steps: int = DemoConfig.sft_steps,
    grpo_steps: int = DemoConfig.grpo_steps,
    eval_items: int = DemoConfig.eval_items,
    recipes: str | Path = DemoConfig.recipes,
) -> dict[str, Path]:
    """Train scenes and held-out eval scenes (half as many, another seed), as COCO has train and val;
    SFT of the tiny start model, then GRPO with prior sampling and plain GRPO from the SFT checkpoint,
    on the same train set; the start and the three results evaluated on the same `eval_items` items;
    their comparison in `out/compare`; the prior-sampling checkpoint exported to `out/export`."""
    import datasets

    datasets.disable_progress_bars()  # the stage lines say what is built; the trainers keep their bars
    out = Path(out)
    scenes = {"train": out / "scenes" / "train", "val": out / "scenes" / "val"}
    data = {
        "build": out / "data" / "train_build",
        "train": out / "data" / "train",
        "eval": out / "data" / "eval",
    }
    evals = {name: out / "eval" / name for name in ("start", *TRAINED)}
    paths = {**data, "preview": out / "preview", **{n: out / n for n in TRAINED}}
    paths.update(compare=out / "compare", export=out / "export")

    def draw_scenes():
        generate_scenes(scenes["train"], num_images=num_images, seed=seed, traces=True)
        generate_scenes(scenes["val"], num_images=max(1, num_images // 2), seed=seed + 1, traces=False)

    def train_set():
        formats = ("open", *FORMATS)
        if not (data["build"] / BUILD_FILE).is_file():  # resumed after the build: import only
            build(
                scenes["train"] / "instances.json",
                scenes["train"] / "images",
                data["build"],
                BuildConfig("train", seed=seed, formats=formats),
            )
        imported = import_traces(scenes["train"] / TRACES_FILE, data["build"], data["train"])
        print(
            f"  traces: kept {imported.counts['kept']} of {imported.counts['rows']} rows "
            f"(rejected: {imported.counts['rejected'] or 'none'}); formats {', '.join(formats)}",
            flush=True,
        )

    def eval_set():
        build(
            scenes["val"] / "instances.json",
            scenes["val"] / "images",
            data["eval"],
            BuildConfig("eval", seed=seed, stats=data["train"]),
        )

    def start(name: str) -> str:
        return START if TRAINED[name][1] is None else str(paths[TRAINED[name][1]])

    def train(name: str, steps: int):
        train_main(
            [
                str(Path(recipes) / f"{name}.yaml"),  # a file, else a packaged recipe's name
                "--model_name_or_path",
                start(name),
                "--dataset_path",
                str(data["train"]),
                "--output_dir",
                str(paths[name]),
                "--max_steps",
                str(steps),
                "--save_strategy",
                "no",
                "--seed",
                str(seed),
                *([] if name == "sft" else ["--max_completion_length", str(NEW_TOKENS)]),
            ]
        )

    def evaluate(name: str):
        model = START if name == "start" else str(paths[name])
        config = EvalConfig(
            formats=EVAL_FORMATS,
            diagnostics=("blind", "shape", "crm", "evidence"),
            limit=eval_items,
            decoding=Decoding(max_new_tokens=NEW_TOKENS),
        )
        run_eval(model, data["eval"], evals[name], config)

    def learning() -> dict[str, list[dict]]:
        return {TRAINED[n][0]: log_history(paths[n]) for n in ("grpo_prior", "grpo")}

    def compare():
        # overwrite: a comparison cut short before its curves is made again
        compared = compare_runs(list(evals.values()), paths["compare"], overwrite=True)
        histories = learning()
        with open(compared, "a", encoding="utf-8") as f:
            f.write("\n" + "\n".join(learning_section(learning_summary(histories), LEARNING_CHART)) + "\n")
        curves = {name: generated_reward(history) for name, history in histories.items()}
        reward_curve_chart(curves, paths["compare"] / LEARNING_CHART)  # last: it marks the stage done

    def ready(path: Path, marker: str) -> Callable[[], bool]:
        return lambda: (path / marker).is_file()

    stages = [
        (
            "draw synthetic scenes (train with traces, held-out val)",
            out / "scenes",
            lambda: (
                (scenes["train"] / TRACES_FILE).is_file() and (scenes["val"] / "instances.json").is_file()
            ),
            draw_scenes,
        ),
        (
            "build the MPCC train set in every format and import the scenes' traces",
            data["train"],
            ready(data["train"], BUILD_FILE),
            train_set,
        ),
        (
            "build the MPCC eval set (levels from the train set's statistics)",
            data["eval"],
            ready(data["eval"], BUILD_FILE),
            eval_set,
        ),
        (
            "write a visual preview of the eval set",
            paths["preview"],
            ready(paths["preview"], "index.html"),
            lambda: write_preview(data["eval"], paths["preview"], num=24, seed=seed),
        ),
        *[
            (
                f"{TRAINED[name][0]} from {start(name)}, {steps} steps",
                paths[name],
                ready(paths[name], "trainer_state.json"),
                lambda name=name, steps=steps: train(name, steps),
            )
            for name, steps in (("sft", sft_steps), ("grpo_prior", grpo_steps), ("grpo", grpo_steps))
        ],
        *[
            (
                f"evaluate {START if name == 'start' else name} on {eval_items} items",
                where,
                ready(where, METRICS),
                lambda name=name: evaluate(name),
            )
            for name, where in evals.items()
        ],
        ("compare the four models", paths["compare"], ready(paths["compare"], LEARNING_CHART), compare),
        (
            "export the prior-sampling model with its eval results",
            paths["export"],
            ready(paths["export"], "config.json"),
            lambda: export(paths["grpo_prior"], paths["export"], eval_run=evals["grpo_prior"]),
        ),
    ]
    _stages(stages)
    # the comparison's two headline tables, for the terminal, from the metrics and logs themselves
    accuracy = accuracy_by_format(compared_metrics(list(evals.values())))
    print("\n".join(accuracy + learning_section(learning_summary(learning()))), flush=True)
    print(
        f"comparison: {paths['compare'] / COMPARISON} (charts: {ACCURACY_CHART}, {LEARNING_CHART})\n"
        f"preview: {paths['preview'] / 'index.html'}; reports: {out / 'eval'}/*/{REPORT_HTML}",
        flush=True,
    )
    return {**paths, **{f"eval_{n}": p for n, p in evals.items()}}
