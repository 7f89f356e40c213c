"""SFT on template traces teaches the answer format to a random tiny model (CPU, about 40 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpcc.data.render import load_dataset
from mpcc.generation.decoding import Decoding
from mpcc.generation.generators import generate
from mpcc.rewards import format_reward
from mpcc.train import build_trainer
from mpcc.training.config import load_recipe
from mpcc.training.data import resolve_dataset

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "sft.yaml"


@pytest.mark.slow
def test_sft_on_traces_teaches_the_format(tmp_path, monkeypatch):
    monkeypatch.setenv("MPCC_CACHE", str(tmp_path / "cache"))
    run, args, model_args = load_recipe(
        RECIPE,
        [
            "--output_dir",
            str(tmp_path / "sft"),
            "--max_steps",
            "150",
            "--save_strategy",
            "no",
            "--learning_rate",
            "5e-3",
            "--lr_scheduler_type",
            "constant",
            "--per_device_train_batch_size",
            "8",
        ],
    )
    trainer = build_trainer(run, args, model_args)
    rows = load_dataset(resolve_dataset("synthetic:tiny")).select(range(16))
    greedy = Decoding(max_new_tokens=60)
    before = format_reward(generate(trainer.model.eval(), trainer.processing_class, list(rows), greedy))
    trainer.train()
    after = format_reward(generate(trainer.model.eval(), trainer.processing_class, list(rows), greedy))
    assert sum(before) == 0
    assert sum(after) / len(after) >= 0.4
