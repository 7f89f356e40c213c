"""Step time of vanilla TRL GRPOTrainer vs mpcc's GRPO and prior-sampling trainers (same run, CPU).

Same tiny model, data, rewards and settings for all; prior sampling uses `replace` (the trace takes
one of the 4 slots, which is then not generated). Reports the median of TRL's per-step `step_time`
after warm-up and the ratio to vanilla, and writes JSON:

    python benchmarks/grpo_step_time.py --steps 12 --out benchmarks/results/grpo_step_time.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import trl

from mpcc.train import build_trainer
from mpcc.training.config import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "tiny"
WARMUP = 2


def step_times(variant: str, steps: int, overrides: list[str]) -> list[float]:
    recipe = "grpo" if variant in ("vanilla TRL", "mpcc grpo") else "grpo_prior"
    with tempfile.TemporaryDirectory() as tmp:
        run, args, model_args = load_recipe(
            RECIPES / f"{recipe}.yaml",
            ["--output_dir", tmp, "--max_steps", str(steps), "--save_strategy", "no", *overrides],
        )
        trainer = build_trainer(run, args, model_args)
        if variant == "vanilla TRL":  # the same pieces in TRL's own trainer
            trainer = trl.GRPOTrainer(
                model=trainer.model,
                reward_funcs=trainer.reward_funcs,
                args=args,
                train_dataset=trainer.train_dataset,
                processing_class=trainer.processing_class,
            )
        trainer.train()
    return [h["step_time"] for h in trainer.state.log_history if "step_time" in h][WARMUP:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/grpo_step_time.json"))
    a = p.parse_args()
    common = ["--per_device_train_batch_size", "8", "--num_generations", "4", "--max_completion_length", "48"]
    variants = {
        "vanilla TRL": common,
        "mpcc grpo": common,
        "mpcc grpo_prior (replace)": [*common, "--prior_mode", "replace"],
    }
    times = {name: step_times(name, a.steps, extra) for name, extra in variants.items()}
    base = statistics.median(times["vanilla TRL"])
    result = {
        "command": f"python benchmarks/grpo_step_time.py --steps {a.steps}",
        "trl": trl.__version__,
        "machine": platform.platform(),
        "warmup_steps": WARMUP,
        "median_step_s": {k: statistics.median(v) for k, v in times.items()},
        "step_times": times,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print("| trainer | median step (s) | vs vanilla TRL |\n|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {base / median:.2f}x |")
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
