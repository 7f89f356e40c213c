"""The main job end to end on the embedded default: synthetic scenes -> MPCC train + eval -> preview
-> SFT on the template traces -> GRPO with prior sampling, with the tiny offline model -> evaluation
of that checkpoint (with the blind and shape diagnostics).

Each stage writes under one work directory and is skipped when its output is already there, so
re-running the demo resumes instead of redoing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mpcc.data.build import BuildConfig, build
from mpcc.data.preview import write_preview
from mpcc.data.synthetic import generate_scenes
from mpcc.evaluation.config import Decoding, EvalConfig
from mpcc.evaluation.harness import run_eval
from mpcc.train import main as train_main

logger = logging.getLogger(__name__)


def run_demo(
    out: str | Path,
    num_images: int = 240,
    seed: int = 0,
    sft_steps: int = 150,
    grpo_steps: int = 30,
    recipes: str | Path = "recipes/tiny",
) -> dict[str, Path]:
    """Train scenes and held-out eval scenes (half as many, another seed), as COCO has train and val;
    then `sft_steps` SFT steps and `grpo_steps` GRPO-with-prior-sampling steps from the SFT checkpoint;
    then an evaluation of that checkpoint on the eval set."""
    out = Path(out)
    paths = {
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
        if not (where / "instances.json").is_file():
            logger.info("demo: drawing %d synthetic %s scenes into %s", n, split, where)
            generate_scenes(where, num_images=n, seed=scene_seed)
    configs = {
        "train": BuildConfig("train", seed=seed, template_traces=True),
        "eval": BuildConfig("eval", seed=seed, stats=paths["train"]),
    }
    for split, config in configs.items():
        if not paths[split].is_dir():
            where = scenes[split][0]
            logger.info("demo: MPCC %s set -> %s", split, paths[split])
            build(where / "instances.json", where / "images", paths[split], config)
    page = write_preview(paths["eval"], paths["preview"], num=24, seed=seed)
    print(f"data: train {paths['train']}, eval {paths['eval']}\npreview: {page}", flush=True)
    recipes = Path(recipes)
    stages = {"sft": ("tiny:qwen2_5_vl", sft_steps), "grpo_prior": (str(paths["sft"]), grpo_steps)}
    for stage, (model, steps) in stages.items():
        if not (paths[stage] / "model.safetensors").is_file():
            logger.info("demo: %s for %d steps -> %s", stage, steps, paths[stage])
            train_main(
                [
                    str(recipes / f"{stage}.yaml"),
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
                ]
            )
    print(f"checkpoints: SFT {paths['sft']}, GRPO with prior sampling {paths['grpo_prior']}")
    config = EvalConfig(
        formats=("mc4", "mc7", "yesno", "open"),
        diagnostics=("blind", "shape"),
        limit=60,
        decoding=Decoding(max_new_tokens=64),
    )
    run_eval(str(paths["grpo_prior"]), paths["eval"], paths["report"], config)
    print(f"eval report: {paths['report'] / 'report.md'} (chart: {paths['report'] / 'accuracy.png'})")
    return paths
