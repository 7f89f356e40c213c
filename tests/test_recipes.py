"""Recipes parse with TRL's parser; bad ones stop at start naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trl import SFTConfig

from mpcc.launch import read_recipe
from mpcc.recipes import names, resolve
from mpcc.training.config import MpccGRPOConfig, load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "mpcc" / "recipes"
# The paper recipes ask for bf16, which transformers refuses without a GPU.
CPU = [] if torch.cuda.is_available() else ["--bf16", "false"]


@pytest.mark.parametrize("recipe", names())
def test_every_recipe_parses(recipe):
    run, train, model = load_recipe(recipe, CPU)  # by its packaged name
    assert isinstance(train, SFTConfig if run.trainer == "sft" else MpccGRPOConfig)
    folder = recipe.rpartition("/")[0]
    assert model.model_name_or_path == MODELS[folder]


# Each recipe folder's model: a Qwen2.5-VL at the top, its tiny twin, SmolVLM (Idefics3), SmolVLM2, Gemma 3,
# GLM-4.6V, InternVL3.
MODELS = {
    "": "Qwen/Qwen2.5-VL-3B-Instruct",
    "tiny": "tiny:qwen2_5_vl",
    "smolvlm": "HuggingFaceTB/SmolVLM-Instruct",
    "smolvlm2": "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
    "gemma3": "google/gemma-3-4b-it",
    "glm": "zai-org/GLM-4.6V-Flash",
    "internvl": "OpenGVLab/InternVL3-2B-hf",
}


def test_paper_settings_reach_the_configs():
    run, train, _ = load_recipe(RECIPES / "grpo_prior.yaml", CPU)
    # append: 4 generated + the trace slot, stored as a replace group of 5
    assert run.trainer == "grpo_prior" and train.prior_mode == "replace" and train.num_generations == 5
    # ... while records, cards and loggers see the recipe's own words
    assert train.to_dict()["prior_mode"] == "append" and train.to_dict()["num_generations"] == 4
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


def test_recipes_and_accelerate_configs_resolve_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout
    assert {
        "grpo",
        "grpo_prior",
        "sft",
        "tiny/grpo",
        "tiny/grpo_prior",
        "tiny/sft",
        "smolvlm/grpo_prior",
        "smolvlm2/grpo_prior",
        "gemma3/grpo_prior",
        "glm/grpo_prior",
        "internvl/grpo_prior",
    } == set(names())
    assert {"ddp", "zero2", "zero2_offload", "zero3"} == set(names("accelerate"))
    for name in ("tiny/grpo_prior", "tiny/grpo_prior.yaml"):
        assert resolve(name) == RECIPES / "tiny" / "grpo_prior.yaml"
    assert resolve("grpo_prior") == RECIPES / "grpo_prior.yaml"
    for name in ("zero2_offload", "zero2_offload.yaml", "accelerate/zero2_offload"):
        assert resolve(name, "accelerate") == RECIPES / "accelerate" / "zero2_offload.yaml"
    # wherever mpcc reads accelerate_config, a name gives the packaged file (the paper recipes name theirs)
    assert read_recipe("grpo_prior").accelerate_config == str(RECIPES / "accelerate" / "zero2_offload.yaml")
    # an existing file wins over the packaged recipe of the same name
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "grpo_prior.yaml").write_text("trainer: grpo\noutput_dir: o\nuse_cpu: true\n")
    assert resolve("tiny/grpo_prior.yaml") == Path("tiny/grpo_prior.yaml")
    assert load_recipe("tiny/grpo_prior.yaml")[0].trainer == "grpo"
    # a checkout shows the packaged files as the top-level `recipes/` (README paths), one copy
    assert (ROOT / "recipes").is_symlink() and (ROOT / "recipes").resolve() == RECIPES


def test_unknown_names_list_the_packaged_ones():
    with pytest.raises(ValueError, match=r"^nope: no such file.*packaged: .*\bgrpo, .*tiny/grpo_prior"):
        resolve("nope")
    with pytest.raises(ValueError, match=r"accelerate/zero3: .* no packaged recipe"):
        load_recipe("accelerate/zero3")  # an Accelerate config is not a recipe
    with pytest.raises(ValueError, match=r"zero9: .* no packaged Accelerate config .*zero2_offload"):
        read_recipe(RECIPES / "tiny" / "grpo_prior.yaml", ["--accelerate_config", "zero9"])


def _recipe(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_unknown_key_and_wrong_type_fail_at_start(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"r.yaml.*learning_rat"):  # no silent prefix matching either
        load_recipe(_recipe(tmp_path, "trainer: grpo\noutput_dir: o\nuse_cpu: true\nlearning_rat: 0.1\n"))
    with pytest.raises(ValueError, match=r"r\.yaml: learning_rate: invalid float value: 'fast'"):
        load_recipe(_recipe(tmp_path, "trainer: grpo\noutput_dir: o\nuse_cpu: true\nlearning_rate: fast\n"))
    assert "usage:" not in capsys.readouterr().err  # one line, not argparse's whole usage
    with pytest.raises(ValueError, match="prior_mode"):
        load_recipe(_recipe(tmp_path, "trainer: grpo_prior\noutput_dir: o\nprior_mode: sometimes\n"))
    with pytest.raises(ValueError, match="trainer must be one of"):
        load_recipe(_recipe(tmp_path, "trainer: ppo\noutput_dir: o\nuse_cpu: true\n"))
    with pytest.raises(ValueError, match="unknown recipe key 'nonsense'"):
        load_recipe(_recipe(tmp_path, "trainer: grpo\noutput_dir: o\nuse_cpu: true\nnonsense: null\n"))
    with pytest.raises(ValueError, match="YAML mapping"):
        load_recipe(_recipe(tmp_path, "- a list\n"))
