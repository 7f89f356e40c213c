"""Each trainer runs from its tiny recipe on CPU; prior sampling puts exactly one trace in each group."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from stock_files import assert_stock_folders

from mpcc.train import build_trainer, main
from mpcc.training.config import load_recipe
from mpcc.training.curves import log_history

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "tiny"


def _history(output_dir: Path) -> list[dict]:
    return log_history(sorted(output_dir.glob("checkpoint-*"))[-1])


@pytest.mark.parametrize("recipe", ["sft", "grpo", "grpo_prior"])
def test_tiny_recipe_trains_and_saves(recipe, tmp_path, capsys):
    out = tmp_path / recipe
    assert (
        main(
            [
                str(RECIPES / f"{recipe}.yaml"),
                "--output_dir",
                str(out),
                "--max_steps",
                "4",
                "--save_steps",
                "4",
            ]
        )
        == 0
    )
    assert "model saved to" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()
    assert_stock_folders(out, out / "checkpoint-4")  # the Trainer's checkpoints too
    steps = [h for h in _history(out) if "loss" in h]
    assert len(steps) == 4 and all(torch.isfinite(torch.tensor(h["loss"])) for h in steps)
    # the final state beside the model: the learning curves of the whole run (mpcc.training.curves)
    assert [h["step"] for h in log_history(out) if "loss" in h] == [1, 2, 3, 4]
    # a use_cpu recipe: DeepSpeed's "no GPU found, using the CPU" notice is dropped, nothing else of it
    deepspeed = logging.getLogger("DeepSpeed")
    notice = "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."
    assert not deepspeed.filter(logging.makeLogRecord({"msg": notice}))
    assert deepspeed.filter(logging.makeLogRecord({"msg": "Setting ds_accelerator to cpu (override)"}))


def test_prior_sampling_one_trace_per_group(tmp_path):
    """4 groups per step (16 rows, groups of 4): every group gets its trace, in its last slot, scored well."""
    out = tmp_path / "prior"
    run, args, model_args = load_recipe(
        RECIPES / "grpo_prior.yaml",
        [
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "16",
            "--save_strategy",
            "no",
        ],
    )
    trainer = build_trainer(run, args, model_args)
    trainer.train()
    assert args.num_generations == 4  # append: 3 generated + the trace slot
    logged = [h for h in trainer.state.log_history if "prior/traces" in h]
    assert [h["prior/traces"] for h in logged] == [h["prior/groups"] for h in logged] == [4.0, 4.0]
    assert all(h["prior/injected_fraction"] == 1.0 for h in logged)
    # the template trace passes format (0.5) + exact match (1.0) + Levenshtein (0.5)
    assert all(h["prior/trace_reward"] == pytest.approx(2.0) for h in logged)
    assert all(h["prior/trace_advantage"] > 0 for h in logged)


def test_prior_probability_zero_is_plain_grpo(tmp_path):
    run, args, model_args = load_recipe(
        RECIPES / "grpo_prior.yaml",
        ["--output_dir", str(tmp_path), "--max_steps", "1", "--prior_prob", "0", "--save_strategy", "no"],
    )
    trainer = build_trainer(run, args, model_args)
    trainer.train()
    (logged,) = [h for h in trainer.state.log_history if "prior/traces" in h]
    assert logged["prior/traces"] == 0 and logged["prior/injected_fraction"] == 0


def test_missing_trace_column_fails_at_start(tmp_path, tinycoco):
    from mpcc.data.build import BuildConfig, build

    build(
        tinycoco / "instances.json", tinycoco / "images", tmp_path / "data", BuildConfig("train"), num_proc=1
    )
    run, args, model_args = load_recipe(
        RECIPES / "grpo_prior.yaml",
        ["--output_dir", str(tmp_path / "o"), "--dataset_path", str(tmp_path / "data")],
    )
    with pytest.raises(ValueError, match="reasoning traces"):
        build_trainer(run, args, model_args)


def test_wandb_offline_logs_completions_with_image_prompts(tmp_path, monkeypatch):
    """What a user sees after `wandb sync`, read from the offline run: the prior-sampling metrics at each
    step, and the completions table (TRL + wandb crash on image prompts in it; mpcc logs prompts as text)
    with each row's masked image (wandb stages tables with media as run artifacts)."""
    import hashlib
    import io

    import pandas as pd
    from PIL import Image
    from wandb_records import history

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))  # where artifacts are staged
    out = tmp_path / "run"
    assert (
        main(
            [
                str(RECIPES / "grpo_prior.yaml"),
                "--output_dir",
                str(out),
                "--max_steps",
                "2",
                "--save_strategy",
                "no",
                "--report_to",
                "wandb",
                "--log_completions",
                "true",
            ]
        )
        == 0
    )
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    steps = [s for s in history(run_file) if "train/prior/groups" in s]
    assert len(steps) == 2 and all(float(s["train/prior/traces"]) >= 1 for s in steps)
    assert all(0 <= float(s["train/prior/injected_fraction"]) <= 1 for s in steps)
    assert sum("completions/artifact_path" in s for s in history(run_file)) == 2  # one table per step
    staged = list((tmp_path / "wandb_data").rglob("*"))
    tables = [json.loads(f.read_text()) for f in staged if f.is_file() and f.read_bytes()[:1] == b"{"]
    tables = [t for t in tables if t.get("_type") == "table" and "prompt" in t["columns"]]
    assert tables, "no completions table staged"
    by_hash = {hashlib.sha256(f.read_bytes()).hexdigest(): f for f in staged if f.is_file()}
    column = tables[0]["columns"].index("image")
    for row in tables[0]["data"]:
        (cell,) = row[column]  # the row's one image, as an image file of the run
        assert cell["_type"] == "image-file"
        with Image.open(io.BytesIO(by_hash[cell["sha256"]].read_bytes())) as image:
            assert image.size == (cell["width"], cell["height"])
            assert (0, 0, 0) in {c for _, c in image.convert("RGB").getcolors(1 << 24)}  # the black mask
    assert all("user: <image> One object in this image is hidden" in row[1] for row in tables[0]["data"])
    table = pd.read_parquet(out / "completions" / "completions_00002.parquet")
    assert table["prompt"].str.contains("user: <image> One object in this image is hidden").all()


def _parameters(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_the_mechanism_plain_grpo_is_stuck_prior_sampling_learns(tmp_path):
    """From a random model every generated answer scores 0: plain GRPO's groups have zero variance, so
    its advantages and gradients are zero and the weights do not move. With prior sampling the trace
    carries a positive advantage and the weights move toward it."""
    stuck = ["--output_dir", str(tmp_path / "grpo"), "--max_steps", "3", "--save_strategy", "no"]
    run, args, model_args = load_recipe(RECIPES / "grpo.yaml", stuck)
    trainer = build_trainer(run, args, model_args)
    before = _parameters(trainer.model)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert [h["frac_reward_zero_std"] for h in logged] == [1.0, 1.0, 1.0]
    assert before and all(torch.equal(before[n], p) for n, p in _parameters(trainer.model).items())

    run, args, model_args = load_recipe(
        RECIPES / "grpo_prior.yaml", [*stuck[:1], str(tmp_path / "prior"), *stuck[2:]]
    )
    trainer = build_trainer(run, args, model_args)
    before = _parameters(trainer.model)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logged) == 3 and all(h["prior/trace_advantage"] > 0 for h in logged)
    assert any(not torch.equal(before[n], p) for n, p in _parameters(trainer.model).items())


@pytest.mark.parametrize(
    "options",
    [
        ["--prior_when", "group_fails"],
        ["--prior_in_group_stats", "false"],
        ["--prior_schedule", "linear", "--prior_prob", "0.5"],
        ["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "all-linear"],
        ["--gradient_accumulation_steps", "2"],
    ],
)
def test_prior_options_train(options, tmp_path):
    run, args, model_args = load_recipe(
        RECIPES / "grpo_prior.yaml",
        [
            "--output_dir",
            str(tmp_path),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--save_strategy",
            "no",
            *options,
        ],
    )
    trainer = build_trainer(run, args, model_args)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "prior/traces" in h]
    assert len(logged) == 2
    if options[1] in ("group_fails", "false"):
        # random model: every group fails, so every group (2 per step) gets its trace
        assert [h["prior/traces"] for h in logged] == [2.0, 2.0]
    if options[1] == "false":  # centred on the generated mean (0): 2 / std([0, 0, 0, 2]) = 2
        assert all(h["prior/trace_advantage"] == pytest.approx(2.0, rel=1e-3) for h in logged)
    if options[0] == "--gradient_accumulation_steps":  # one generation of 2 x 8 rows per optimizer step
        assert [h["prior/traces"] for h in logged] == [h["prior/groups"] for h in logged] == [4.0, 4.0]
    if options[0] == "--use_peft":
        trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)


def test_eval_callback_logs_during_training(tmp_path, tiny_builds):
    run, args, model_args = load_recipe(
        RECIPES / "grpo_prior.yaml",
        [
            "--output_dir",
            str(tmp_path),
            "--max_steps",
            "2",
            "--save_strategy",
            "no",
            "--eval_dataset_path",
            str(tiny_builds["eval"]),
            "--eval_every_steps",
            "1",
            "--eval_items",
            "3",
            "--eval_grounding",
            "true",
        ],
    )
    trainer = build_trainer(run, args, model_args)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "mpcc_eval/accuracy" in h]
    assert [h["step"] for h in logged] == [1, 2]
    assert all(0 <= h["mpcc_eval/accuracy"] <= 1 and "mpcc_eval/format_compliance" in h for h in logged)
    for h in logged:  # grounding on the same answers: attention shares in [0, 1], an evidence share
        assert 0 < h["grounding/evidence_mass_raw"] < h["grounding/image_mass_raw"] <= 1
        assert 0 < h["grounding/evidence_share"] < 1 and h["grounding/entropy_full"] > 0
        assert h["grounding/collapse_ratio"] > 0 and h["grounding/evidence_lift"] > 0
    assert trainer.model.training  # back in training mode


def test_sft_targets_answer_what_each_row_asks(tmp_path):
    """A train build in every format: the SFT completion ends in the row's letter, yes/no or name."""
    from mpcc.data.answer_options import LETTERS
    from mpcc.data.build import BuildConfig, build
    from mpcc.data.render import load_dataset
    from mpcc.data.synthetic import generate_scenes
    from mpcc.training.data import load_train_dataset

    generate_scenes(tmp_path / "scenes", num_images=20, seed=0)
    config = BuildConfig("train", formats=("open", "mc4", "mc7", "yesno"), template_traces=True)
    scenes, out = tmp_path / "scenes", tmp_path / "train"
    build(scenes / "instances.json", scenes / "images", out, config, num_proc=1)
    rows = load_dataset(out).remove_columns("image").to_list()
    sft = load_train_dataset(str(out), "sft")
    assert len(sft) == len(rows) and sft.column_names == ["image", "prompt", "completion"]
    for row, sample in zip(rows, sft.remove_columns("image")):
        (message,) = sample["completion"]
        text = message["content"][0]["text"]
        answer = row["solution"] if row["format"] == "open" else row["answer"]
        assert sample["prompt"] == row["prompt"]
        assert text.endswith(f"</think><answer>{answer}</answer>") and row["reasoning"] in text
        if row["format"] in ("mc4", "mc7"):
            assert answer in LETTERS and row["options"][LETTERS.index(answer)] == row["solution"]
    assert {"mc4", "mc7"} & {r["format"] for r in rows}
