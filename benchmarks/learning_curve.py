"""Prior sampling vs plain GRPO from a random tiny model on synthetic scenes (CPU).

A random model never writes a well-formed answer, so plain GRPO's groups all score 0: zero variance,
zero advantage, no learning. With prior sampling each group holds a rewarded trace, which the policy
learns to imitate. Prints the mean reward of *generated* samples (traces excluded) over training and
writes JSON:

    python benchmarks/learning_curve.py --steps 150 --out benchmarks/results/learning_curve.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from mpcc.reports.tables import markdown_table
from mpcc.train import build_trainer
from mpcc.training.config import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "tiny"


def curve(recipe: str, steps: int, overrides: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        run, args, model_args = load_recipe(
            RECIPES / f"{recipe}.yaml",
            ["--output_dir", tmp, "--max_steps", str(steps), "--save_strategy", "no", *overrides],
        )
        trainer = build_trainer(run, args, model_args)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    rows = []
    for h in trainer.state.log_history:
        if "reward" not in h:
            continue
        generated = h.get("prior/generated_reward", h["reward"])
        rows.append({"step": h["step"], "generated_reward": generated, "entropy": h.get("entropy")})
    rows[-1]["train_seconds"] = seconds
    return rows


def window(rows: list[dict], start: int, stop: int) -> float:
    return statistics.mean(r["generated_reward"] for r in rows if start < r["step"] <= stop)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/learning_curve.json"))
    a = p.parse_args()
    # Same settings for both: 4 groups of 4 per step (prior: 3 generated + the trace), lr 1e-2 constant.
    common = [
        "--per_device_train_batch_size",
        "16",
        "--learning_rate",
        "1e-2",
        "--lr_scheduler_type",
        "constant",
    ]
    curves = {
        "grpo_prior": curve("grpo_prior", a.steps, common),
        "grpo": curve("grpo", a.steps, [*common, "--num_generations", "4"]),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps(
            {"command": f"python benchmarks/learning_curve.py --steps {a.steps}", "curves": curves}, indent=1
        )
        + "\n"
    )
    edges = [0, a.steps // 5, 2 * a.steps // 5, 3 * a.steps // 5, 4 * a.steps // 5, a.steps]
    spans = list(zip(edges, edges[1:]))
    table = [
        (f"{name}: mean generated reward", *(f"{window(rows, lo, hi):.3f}" for lo, hi in spans))
        for name, rows in curves.items()
    ]
    print("\n".join(markdown_table(("steps", *(f"{lo + 1}-{hi}" for lo, hi in spans)), table)))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
