"""Eval throughput: the batched harness vs one-at-a-time generation (how the authors' script evaluates).

Same model, same rows, same run, greedy; reports items/s for each and the ratio, and writes JSON:

    python benchmarks/eval_throughput.py --data EVAL_BUILD --model tiny:qwen2_5_vl --items 64
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from mpcc.evaluation.config import Decoding, EvalConfig
from mpcc.evaluation.generation import generate
from mpcc.evaluation.harness import eval_rows
from mpcc.models import load_model, load_processor, resolve_model_path


def items_per_second(model, processor, rows, batch_size: int, decoding: Decoding) -> float:
    start = time.perf_counter()
    for i in range(0, len(rows), batch_size):
        generate(model, processor, rows[i : i + batch_size], decoding)
    return len(rows) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="an `mpcc prepare eval` build")
    p.add_argument("--model", default="tiny:qwen2_5_vl")
    p.add_argument("--items", type=int, default=64, help="mc4 rows to generate for")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_throughput.json"))
    a = p.parse_args()
    rows = [row for _, row in eval_rows(a.data, EvalConfig(formats=("mc4",), limit=a.items))]
    path = resolve_model_path(a.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = load_model(path).to(device).eval(), load_processor(path)
    decoding = Decoding(max_new_tokens=a.max_new_tokens)
    generate(model, processor, rows[:2], decoding)  # warm-up
    single = items_per_second(model, processor, rows, 1, decoding)
    batched = items_per_second(model, processor, rows, a.batch_size, decoding)
    result = {
        "command": " ".join(
            [
                "python",
                "benchmarks/eval_throughput.py",
                f"--items {a.items}",
                f"--batch-size {a.batch_size}",
                f"--max-new-tokens {a.max_new_tokens}",
            ]
        ),
        "device": device,
        "machine": platform.platform(),
        "model": a.model,
        "items": len(rows),
        "one_at_a_time_items_per_s": single,
        "batched_items_per_s": batched,
        "speedup": batched / single,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print("| generation | items/s |\n|---|---|")
    print(f"| one at a time | {single:.2f} |\n| batched ({a.batch_size}) | {batched:.2f} |")
    print(f"| speed-up | {batched / single:.1f}x |\n\nwrote {a.out}")


if __name__ == "__main__":
    main()
