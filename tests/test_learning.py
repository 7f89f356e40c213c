"""SFT on the scene generator's traces teaches a random tiny model the answer format, and to read the scene
type off the image into its reasoning (CPU, about 60 s): the demo's above-chance result on a reduced
budget, as a bound with a fixed seed that fails if learning breaks (not a timed test)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mpcc.data.render import load_dataset
from mpcc.data.synthetic import SCENE_WORDS, SCENES, generate_scenes, scene_type
from mpcc.demo import traced_train_set
from mpcc.evaluation.grounding.conditions import CANVAS
from mpcc.generation.decoding import Decoding
from mpcc.generation.generators import generate
from mpcc.rewards import format_reward
from mpcc.train import build_trainer
from mpcc.training.config import load_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "sft.yaml"
SEED = 0


def _train_set(root: Path) -> Path:
    """60 scenes with their traces, built in every format and the traces imported, as the demo does."""
    generate_scenes(root / "scenes", num_images=60, seed=SEED, traces=True)
    traced_train_set(root / "scenes", root / "build", root / "train", SEED, num_proc=1)
    return root / "train"


@pytest.mark.slow
def test_sft_on_traces_teaches_the_format_and_to_read_the_scene(tmp_path):
    train = _train_set(tmp_path)
    overrides = {
        "output_dir": tmp_path / "sft",
        "dataset_path": train,
        "max_steps": 150,
        "save_strategy": "no",
        "learning_rate": 5e-3,
        "lr_scheduler_type": "constant",
        "per_device_train_batch_size": 8,
    }
    trainer = build_trainer(*load_recipe(RECIPE, [f"--{k}={v}" for k, v in overrides.items()]))
    rows = list(load_dataset(train).select(range(16)))
    greedy = Decoding(max_new_tokens=60)
    before = format_reward(generate(trainer.model.eval(), trainer.processing_class, rows, greedy))
    trainer.train()
    after = generate(trainer.model.eval(), trainer.processing_class, rows, greedy)
    assert sum(before) == 0
    assert sum(format_reward(after)) / len(after) >= 0.4

    # The scene its reasoning names: the image's own far more often than a uniform guess, and more often
    # than with a blank image in its place (the same questions).
    blank = [{**row, "image": Image.new("RGB", row["image"].size, CANVAS)} for row in rows]
    blanked = generate(trainer.model, trainer.processing_class, blank, greedy)
    truths = [f"This is {SCENE_WORDS[scene_type(row['image_id'], seed=SEED)]}" for row in rows]
    seen = sum(truth in c for c, truth in zip(after, truths, strict=True))
    guessed = sum(truth in c for c, truth in zip(blanked, truths, strict=True))
    assert seen >= len(rows) / len(SCENES) + 5, (seen, guessed, after[:2])
    assert seen >= guessed + 4, (seen, guessed, after[:2])
