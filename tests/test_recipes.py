"""Recipes parse with TRL's parser; bad ones stop at start naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trl import SFTConfig

from mpcc.training.config import MpccGRPOConfig, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# The paper recipes ask for bf16, which transformers refuses without a GPU.
CPU = [] if torch.cuda.is_available() else ["--bf16", "false"]


@pytest.mark.parametrize(
    "recipe", sorted(p.relative_to(RECIPES) for p in RECIPES.rglob("*.yaml") if p.parent.name != "accelerate")
)
def test_every_recipe_parses(recipe):
    run, train, model = load_recipe(RECIPES / recipe, CPU)
    assert isinstance(train, SFTConfig if run.trainer == "sft" else MpccGRPOConfig)
    assert model.model_name_or_path


def test_paper_settings_reach_the_configs():
    run, train, _ = load_recipe(RECIPES / "grpo_prior.yaml", CPU)
    # append: 4 generated + the trace slot, stored as a replace group of 5
    assert run.trainer == "grpo_prior" and train.prior_mode == "replace" and train.num_generations == 5
    assert (train.num_generations - 1, train.learning_rate, train.beta, train.max_completion_length) == (
        4,
        2e-6,
        0.04,
        256,
    )
    assert (train.adam_beta2, train.weight_decay, train.max_grad_norm, train.loss_type) == (
        0.99,
        0.1,
        0.1,
        "grpo",
    )
    _, sft, _ = load_recipe(RECIPES / "sft.yaml", CPU)
    assert sft.max_length is None  # YAML null survives: image tokens are never cut


def test_command_line_overrides_win():
    _, train, _ = load_recipe(
        RECIPES / "tiny" / "grpo_prior.yaml", ["--prior_prob", "0.5", "--max_steps", "3"]
    )
    assert train.prior_prob == 0.5 and train.max_steps == 3


def _recipe(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_unknown_key_and_wrong_type_fail_at_start(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"r.yaml.*learning_rat"):  # no silent prefix matching either
        load_recipe(_recipe(tmp_path, "trainer: grpo\noutput_dir: o\nuse_cpu: true\nlearning_rat: 0.1\n"))
    with pytest.raises(ValueError, match="r.yaml"):
        load_recipe(_recipe(tmp_path, "trainer: grpo\noutput_dir: o\nuse_cpu: true\nlearning_rate: fast\n"))
    assert "learning_rate" in capsys.readouterr().err
    with pytest.raises(ValueError, match="prior_mode"):
        load_recipe(_recipe(tmp_path, "trainer: grpo_prior\noutput_dir: o\nprior_mode: sometimes\n"))
    with pytest.raises(ValueError, match="trainer must be one of"):
        load_recipe(_recipe(tmp_path, "trainer: ppo\noutput_dir: o\nuse_cpu: true\n"))
    with pytest.raises(ValueError, match="unknown recipe key 'nonsense'"):
        load_recipe(_recipe(tmp_path, "trainer: grpo\noutput_dir: o\nuse_cpu: true\nnonsense: null\n"))
    with pytest.raises(ValueError, match="YAML mapping"):
        load_recipe(_recipe(tmp_path, "- a list\n"))
