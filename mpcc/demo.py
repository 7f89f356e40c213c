"""The main job end to end on the embedded default: synthetic scenes (with reasoning traces written by
the scene generator) -> MPCC train build, traces imported and verified like any teacher's -> eval build
-> preview -> SFT on the traces -> GRPO with prior sampling, with the tiny offline model -> evaluation
of that checkpoint (with the blind and shape diagnostics, and the step-level crm and evidence ones).

Each stage writes under one work directory and is skipped when its output is already there, so
re-running the demo resumes instead of redoing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mpcc.annotation.importing import import_traces
from mpcc.data.build import BuildConfig, build
from mpcc.data.preview import write_preview
from mpcc.data.synthetic import TRACES_FILE, generate_scenes
from mpcc.evaluation.config import EVAL_FORMATS, Decoding, EvalConfig
from mpcc.evaluation.harness import run_eval
from mpcc.options import option
from mpcc.train import main as train_main

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """`mpcc demo`: synthetic scenes with reasoning traces -> MPCC train set (traces imported and verified)
    + eval set -> visual preview -> SFT -> GRPO with prior sampling (tiny offline model, CPU) -> eval."""

    out: Path = option(Path("runs/demo"), "work directory")
    num_images: int = option(240, "synthetic scenes", minimum=2)
    seed: int = option(0, "seed", minimum=0)
    sft_steps: int = option(150, "SFT steps on the traces", minimum=1)
    grpo_steps: int = option(30, "then GRPO + prior sampling steps", minimum=1)
    recipes: str = option(
        "tiny", "where sft.yaml and grpo_prior.yaml are: a directory, or a packaged recipe folder's name"
    )


def run_demo(
    out: str | Path = DemoConfig.out,
    num_images: int = DemoConfig.num_images,
    seed: int = DemoConfig.seed,
    sft_steps: int = DemoConfig.sft_steps,
    grpo_steps: int = DemoConfig.grpo_steps,
    recipes: str | Path = DemoConfig.recipes,
) -> dict[str, Path]:
    """Train scenes and held-out eval scenes (half as many, another seed), as COCO has train and val;
    then `sft_steps` SFT steps and `grpo_steps` GRPO-with-prior-sampling steps from the SFT checkpoint;
    then an evaluation of that checkpoint on the eval set. `recipes` holds sft.yaml and grpo_prior.yaml:
    a directory, or a packaged recipe folder's name."""
    out = Path(out)
    paths = {
        "train_build": out / "data" / "train_build",
        "train": out / "data" / "train",
        "eval": out / "data" / "eval",
        "preview": out / "preview",
        "sft": out / "sft",
        "grpo_prior": out / "grpo_prior",
        "report": out / "eval",
    }
    scenes = {
        "train": (out / "scenes" / "train", num_images, seed),
        "eval": (out / "scenes" / "val", max(1, num_images // 2), seed + 1),
    }
    for split, (where, n, scene_seed) in scenes.items():
        wanted = [where / "instances.json"] + ([where / TRACES_FILE] if split == "train" else [])
        if not all(f.is_file() for f in wanted):
            logger.info("demo: drawing %d synthetic %s scenes into %s", n, split, where)
            generate_scenes(where, num_images=n, seed=scene_seed, traces=split == "train")
    train_scenes, eval_scenes = scenes["train"][0], scenes["eval"][0]
    if not paths["train_build"].is_dir():
        logger.info("demo: MPCC train set -> %s", paths["train_build"])
        build(
            train_scenes / "instances.json",
            train_scenes / "images",
            paths["train_build"],
            BuildConfig("train", seed=seed),
        )
    if not paths["train"].is_dir():
        imported = import_traces(train_scenes / TRACES_FILE, paths["train_build"], paths["train"])
        print(
            f"traces: kept {imported.counts['kept']} of {imported.counts['rows']} train rows "
            f"(rejected: {imported.counts['rejected'] or 'none'})",
            flush=True,
        )
    if not paths["eval"].is_dir():
        logger.info("demo: MPCC eval set -> %s", paths["eval"])
        build(
            eval_scenes / "instances.json",
            eval_scenes / "images",
            paths["eval"],
            BuildConfig("eval", seed=seed, stats=paths["train"]),
        )
    page = write_preview(paths["eval"], paths["preview"], num=24, seed=seed)
    print(f"data: train {paths['train']}, eval {paths['eval']}\npreview: {page}", flush=True)
    # Scene traces take about 47 tokens of the tiny tokenizer (up to 69; longer ones are kept whole).
    stages = {
        "sft": ("tiny:qwen2_5_vl", sft_steps, []),
        "grpo_prior": (str(paths["sft"]), grpo_steps, ["--max_completion_length", "64"]),
    }
    for stage, (model, steps, extra) in stages.items():
        if not (paths[stage] / "model.safetensors").is_file():
            logger.info("demo: %s for %d steps -> %s", stage, steps, paths[stage])
            train_main(
                [
                    str(Path(recipes) / f"{stage}.yaml"),  # a file, else a packaged recipe's name
                    "--model_name_or_path",
                    model,
                    "--dataset_path",
                    str(paths["train"]),
                    "--output_dir",
                    str(paths[stage]),
                    "--max_steps",
                    str(steps),
                    "--save_strategy",
                    "no",
                    "--seed",
                    str(seed),
                    *extra,
                ]
            )
    print(f"checkpoints: SFT {paths['sft']}, GRPO with prior sampling {paths['grpo_prior']}")
    config = EvalConfig(
        formats=EVAL_FORMATS,
        diagnostics=("blind", "shape", "crm", "evidence"),
        limit=60,
        decoding=Decoding(max_new_tokens=64),
    )
    run_eval(str(paths["grpo_prior"]), paths["eval"], paths["report"], config)
    print(f"eval report: {paths['report'] / 'report.md'} (chart: {paths['report'] / 'accuracy.png'})")
    return paths
