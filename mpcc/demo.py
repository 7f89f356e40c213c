"""The main job end to end on the embedded default: synthetic scenes -> MPCC train + eval -> preview.

Each stage writes under one work directory and is skipped when its output is already there, so
re-running the demo resumes instead of redoing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mpcc.data.build import BuildConfig, build
from mpcc.data.preview import write_preview
from mpcc.data.synthetic import generate_scenes

logger = logging.getLogger(__name__)


def run_demo(out: str | Path, num_images: int = 240, seed: int = 0) -> dict[str, Path]:
    """Train scenes and held-out eval scenes (half as many, another seed), as COCO has train and val."""
    out = Path(out)
    paths = {"train": out / "data" / "train", "eval": out / "data" / "eval", "preview": out / "preview"}
    scenes = {
        "train": (out / "scenes" / "train", num_images, seed),
        "eval": (out / "scenes" / "val", max(1, num_images // 2), seed + 1),
    }
    for split, (where, n, scene_seed) in scenes.items():
        if not (where / "instances.json").is_file():
            logger.info("demo: drawing %d synthetic %s scenes into %s", n, split, where)
            generate_scenes(where, num_images=n, seed=scene_seed)
    configs = {
        "train": BuildConfig("train", seed=seed),
        "eval": BuildConfig("eval", seed=seed, stats=paths["train"]),
    }
    for split, config in configs.items():
        if not paths[split].is_dir():
            where = scenes[split][0]
            logger.info("demo: MPCC %s set -> %s", split, paths[split])
            build(where / "instances.json", where / "images", paths[split], config)
    page = write_preview(paths["eval"], paths["preview"], num=24, seed=seed)
    print(f"demo done: train {paths['train']}, eval {paths['eval']}\npreview: {page}")
    return paths
