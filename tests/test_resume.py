"""Resuming is the same run: a run cut after a checkpoint and resumed ends with the weights of the
uninterrupted run and logs the same loss at every step after the resume point (SFT, GRPO, GRPO with prior
sampling in both modes, full fine-tune and LoRA). A checkpoint that does not fill the model stops the run
naming the first missing tensor (transformers' own resume loads by the model's names and silently skips
Qwen-VL's renamed checkpoint keys: mpcc.training.resume)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mpcc.train import main
from mpcc.training.curves import log_history
from mpcc.training.resume import ResumeError

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "tiny"
LORA = ["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "all-linear"]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    adapter = folder / "adapter_model.safetensors"
    return load_file(adapter if adapter.is_file() else folder / "model.safetensors")


def _losses(folder: Path) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in log_history(folder) if "loss" in h]


def _cut_after(full: Path, cut: Path, step: int) -> None:
    """`cut` as the run `full` left it right after its step-`step` checkpoint (killed there)."""
    cut.mkdir()
    shutil.copytree(full / f"checkpoint-{step}", cut / f"checkpoint-{step}")
    shutil.copy(full / "mpcc_run.json", cut / "mpcc_run.json")


@pytest.mark.parametrize(
    ("recipe", "options", "moves"),
    [
        ("sft", [], True),
        ("sft", LORA, True),
        ("grpo_prior", [], True),
        ("grpo_prior", ["--prior_mode", "append"], True),
        ("grpo_prior", LORA, True),
        # From the random tiny model every generated answer scores 0: plain GRPO does not move the weights
        # (test_training's mechanism test), so here only its loss log and weights can be compared.
        ("grpo", [], False),
    ],
    ids=["sft", "sft-lora", "grpo_prior", "grpo_prior-append", "grpo_prior-lora", "grpo"],
)
def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights(recipe, options, moves, tmp_path, caplog):
    common = [str(RECIPES / f"{recipe}.yaml"), "--max_steps", "3", "--save_steps", "1", *options]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*common, "--output_dir", str(full)]) == 0
    _cut_after(full, cut, 1)
    caplog.set_level("INFO", logger="mpcc.training.resume")
    assert main([*common, "--output_dir", str(cut), "--resume_from_checkpoint", "auto"]) == 0
    assert "resumed" in caplog.text and "weight tensors from" in caplog.text

    expected, resumed, start = _weights(full), _weights(cut), _weights(full / "checkpoint-1")
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
    moved = max((expected[k].float() - start[k].float()).abs().max().item() for k in expected)
    assert moved > 1e-4 if moves else moved == 0.0  # steps 2-3 changed what the resume had to restore
    full_losses, cut_losses = _losses(full / "checkpoint-3"), _losses(cut / "checkpoint-3")
    assert [s for s, _ in cut_losses] == [s for s, _ in full_losses] == [1, 2, 3]
    assert [loss for _, loss in cut_losses] == pytest.approx([loss for _, loss in full_losses], abs=1e-6)


def test_a_checkpoint_missing_a_tensor_stops_the_resume_naming_it(tmp_path):
    common = [str(RECIPES / "sft.yaml"), "--max_steps", "2", "--save_steps", "1"]
    out = tmp_path / "run"
    assert main([*common, "--output_dir", str(out)]) == 0
    weights = out / "checkpoint-1" / "model.safetensors"
    tensors = load_file(weights)
    dropped = sorted(tensors)[3]
    del tensors[dropped]
    save_file(tensors, weights, metadata={"format": "pt"})
    suffix = dropped.split(".", 1)[1]  # the model's name for it may differ in its prefix
    lacks = rf"checkpoint-1: the checkpoint lacks 1 of the model's tensors, first '[\w.]*{suffix}'"
    with pytest.raises(ResumeError, match=lacks):
        main([*common, "--output_dir", str(out), "--resume_from_checkpoint", str(out / "checkpoint-1")])
