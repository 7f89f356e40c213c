"""`mpcc bench grpo` on CPU with the tiny shape, and the fast generation path's correctness.

Timings here prove nothing (the benchmark reports them; tests never assert speed); what is checked
is that the benchmark measures what it says, and that compiled static-cache generation gives the
same completions, loss and gradients as vanilla TRL on a fixed batch.
"""

from __future__ import annotations

import functools
import json
import statistics
import time

import pytest
import torch
import trl
from transformers import CompileConfig, TrainerCallback

from mpcc.bench import SHAPES, VISION_SHAPES, BenchConfig, bench_dataset
from mpcc.cli import main
from mpcc.families import TINY_ARCHS
from mpcc.models import random_vlm, vision_tower
from mpcc.rewards import resolve_rewards
from mpcc.training.config import MpccGRPOConfig
from mpcc.training.grpo import MpccGRPOTrainer


def _median(steps: list[dict], key: str) -> float:
    return statistics.median(s[key] for s in steps)


def test_bench_writes_phases_tokens_and_speedups(tmp_path, capsys, monkeypatch):
    pause = 0.05  # every reward call sleeps this long: the scoring phase must contain it

    def slow_rewards(spec):
        funcs, weights = resolve_rewards(spec)

        @functools.wraps(funcs[0])
        def slow(*args, **kwargs):
            time.sleep(pause)
            return funcs[0](*args, **kwargs)

        return [slow, *funcs[1:]], weights

    monkeypatch.setattr("mpcc.bench.resolve_rewards", slow_rewards)
    args = ["bench", "grpo", "--out", str(tmp_path), "--steps", "2", "--warmup", "1", "--max-new-tokens", "6"]
    assert main([*args, "--generations", "4", "--variants", "vanilla,mpcc_prior"]) == 0
    report = json.loads((tmp_path / "grpo_bench.json").read_text())
    assert report["device"] and report["versions"]["trl"] == trl.__version__
    assert set(report["variants"]) == {"vanilla", "mpcc_prior"}
    vanilla, prior = report["variants"]["vanilla"], report["variants"]["mpcc_prior"]
    speedup = _median(vanilla["steps"], "step_s") / _median(prior["steps"], "step_s")
    assert prior["speedup_vs_vanilla"] == pytest.approx(speedup)
    for result in (vanilla, prior):
        steps = result["steps"]
        assert len(steps) == 2  # the warm-up step is left out
        reported = [result[k] for k in ("step_s", "generation_s", "scoring_s", "training_s")]
        per_step = ("step_s", "generation", "scoring", "training_s")
        assert reported == pytest.approx([_median(steps, k) for k in per_step])  # medians of the steps shown
        for step in steps:
            assert step["scoring"] >= pause  # the reward calls were timed, inside the step, as scoring
            assert step["generation"] > 0 and step["training_s"] > 0
            assert step["train_tokens"] > step["generated_tokens"] > 0
    # 2 prompts x 4 samples of at most 6 new tokens; the prior variant generates 3 per group, not 4
    assert all(s["generated_tokens"] <= 8 * 6 for s in vanilla["steps"])
    assert all(s["generated_tokens"] <= 6 * 6 for s in prior["steps"])
    # vanilla encodes each group's image for every row, twice (generation, policy forward); mpcc once per
    # step: 2 prompts -> 2 images of the same size, whatever G
    assert vanilla["vision_calls"] == 2 and prior["vision_calls"] == 1
    assert vanilla["patches_encoded"] == 8 * prior["patches_encoded"] > 0
    table = (tmp_path / "grpo_bench.md").read_text()
    assert "| vanilla |" in table and "| mpcc_prior |" in table and table in capsys.readouterr().out


def test_bad_bench_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="variants"):
        BenchConfig(variants=("vanilla", "nope"))
    with pytest.raises(ValueError, match="shape"):
        BenchConfig(shape="70b")
    with pytest.raises(ValueError, match="cache_implementation: static"):
        MpccGRPOConfig(output_dir=str(tmp_path), compile_generation=True)


def test_3b_shape_is_qwen25_vl_3b():
    model, processor = random_vlm("qwen2_5_vl", device="meta", **SHAPES["3b"])
    assert sum(p.numel() for p in model.parameters()) == 3_754_622_976  # Qwen2.5-VL-3B-Instruct's count
    assert len(processor.tokenizer) == model.config.text_config.vocab_size == 151_936


# The real checkpoints' vision tower widths (the patch embedding's output channels), written out here
# independently of mpcc.bench: Qwen2(.5)-VL's ViT, Qwen3-VL's, GLM-4.1V's, SigLIP-so400m, InternViT-300M.
REAL_WIDTHS = {
    "qwen2_vl": 1280,
    "qwen2_5_vl": 1280,
    "qwen3_vl": 1152,
    "glm4v": 1536,
    "glm46v": 1536,
    "gemma3": 1152,
    "idefics3": 1152,
    "smolvlm": 1152,
    "llava_onevision": 1152,
    "internvl": 1024,
}


def test_every_family_has_a_vision_shape_with_its_real_tower_width():
    assert set(VISION_SHAPES) == set(TINY_ARCHS) == set(REAL_WIDTHS)
    for arch, spec in VISION_SHAPES.items():
        model, _ = random_vlm(arch, vision=spec["vision"], config=spec.get("config"), device="meta")
        tower = vision_tower(model)
        embed = next(m for m in tower.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
        assert embed.out_channels == REAL_WIDTHS[arch], arch
        blocks = [m for m in tower.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1]
        assert max(len(b) for b in blocks) == 2, arch  # depth 2
        assert model.config.text_config.hidden_size == 64, arch  # the tiny language model


def test_bench_counts_a_non_qwen_family(tmp_path, capsys):
    """Gemma 3 has no image_grid_thw: patches come from pixel_values, 128 / 8 = 16 x 16 per image."""
    args = ["bench", "grpo", "--out", str(tmp_path), "--arch", "gemma3", "--steps", "1", "--warmup", "0"]
    args += ["--generations", "2", "--max-new-tokens", "4", "--variants", "vanilla,mpcc_grpo"]
    assert main(args) == 0
    report = json.loads((tmp_path / "grpo_bench.json").read_text())
    assert report["config"]["arch"] == "gemma3"
    vanilla, grpo = report["variants"]["vanilla"], report["variants"]["mpcc_grpo"]
    for result in (vanilla, grpo):
        assert result["steps"][0]["patches"] == 2 * 2 * 256  # 2 prompts x G=2 rows, one image each
    # vanilla encodes every row's image twice (generation, policy forward); mpcc_grpo each prompt's image
    # once in generation, then every row's in the policy forward: Gemma 3's projector sits outside the
    # frozen tower and trains, so the memo steps aside there
    assert vanilla["patches_encoded"] == 2 * 2 * 2 * 256
    assert grpo["patches_encoded"] == (2 + 2 * 2) * 256
    lines = (tmp_path / "grpo_bench.md").read_text().splitlines()
    assert lines[0].startswith("GRPO step, gemma3 shape `tiny`")
    header = next(line for line in lines if line.startswith("| trainer |"))
    assert header.split(" | ")[-3:] == ["MFU", "peak GiB", "vs vanilla |"]
    assert "patches encoded" in header and "| vanilla |" in "\n".join(lines) and capsys.readouterr().out


def test_qwen_sizes_are_refused_for_other_families(tmp_path, capsys):
    assert main(["bench", "grpo", "--out", str(tmp_path), "--shape", "3b", "--arch", "gemma3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mpcc bench: error: shape 3b is Qwen2.5-VL's only; --arch gemma3 has tiny and vision"]
    assert not (tmp_path / "grpo_bench.json").exists()


class _Capture(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _one_step(trainer_class, args, dataset, compiled: bool):
    model, processor = random_vlm("qwen2_5_vl", seed=0)
    funcs, args.reward_weights = resolve_rewards("default")
    trainer = trainer_class(
        model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=processor
    )
    if compiled:  # transformers compiles generation on accelerators only; force it to test the path here
        assert trainer.generation_config.disable_compile is False
        trainer.generation_config.compile_config = CompileConfig()
        trainer.generation_config.compile_config._compile_all_devices = True
    capture = _Capture()
    trainer.add_callback(capture)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return list(trainer._logs["completion"]), losses, capture.grads


@pytest.mark.slow
def test_compiled_static_generation_matches_vanilla_trl(tmp_path):
    dataset = bench_dataset(
        BenchConfig(prompts=2, steps=1, warmup=0, image_size=(320, 240)), tmp_path / "data"
    )
    common = {
        "per_device_train_batch_size": 4,
        "num_generations": 2,
        "max_completion_length": 12,
        "max_steps": 2,
        "gradient_checkpointing": True,  # toggled around generation: see drop_stale_input_hooks
        "generation_kwargs": {"do_sample": False},  # greedy: same weights must give the same tokens
        "beta": 0.0,
        "loss_type": "grpo",
        "use_cpu": True,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 1,
    }
    vanilla = _one_step(trl.GRPOTrainer, trl.GRPOConfig(str(tmp_path / "v"), **common), dataset, False)
    fast_args = MpccGRPOConfig(
        str(tmp_path / "f"), cache_implementation="static", compile_generation=True, **common
    )
    torch._dynamo.reset()
    fast = _one_step(MpccGRPOTrainer, fast_args, dataset, True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # compiled once, not once per step
    assert fast[0] == vanilla[0] and len({str(c) for c in vanilla[0]}) > 1  # same completions, not all alike
    assert len(vanilla[1]) == 2 and fast[1] == pytest.approx(vanilla[1], rel=1e-5, abs=1e-7)
    assert vanilla[2].keys() == fast[2].keys() and vanilla[2]
    for name, grad in vanilla[2].items():
        torch.testing.assert_close(fast[2][name], grad, rtol=1e-4, atol=1e-6)
