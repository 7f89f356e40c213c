"""Eval throughput: one row at a time (how the authors' script evaluates), the batched harness, and the
batched harness encoding each item's image once (`reuse_images`) — same model, same rows, same run.

Rows are every format of each item (mc4, mc7, five yes/no, open: 8 rows sharing one image), greedy.
`--shape vision` uses the benchmark's random-weight model with the real vision tower's width (depth 2)
at real image sizes, where encoding is visible on a CPU; `--shape tiny` the tiny model. Medians of
`--repeats`, interleaved; prints a table and writes JSON:

    python benchmarks/eval_throughput.py --data EVAL_BUILD --shape vision --items 8
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from mpcc.bench import SHAPES, VISION_SHAPES, BenchConfig, bench_model
from mpcc.evaluation.config import EVAL_FORMATS, EvalConfig
from mpcc.evaluation.harness import eval_rows
from mpcc.generation.decoding import Decoding
from mpcc.generation.generators import generate
from mpcc.generation.image_features import ImageFeatureMemo
from mpcc.reports.tables import markdown_table


def seconds(model, processor, rows, batch_size: int, decoding: Decoding) -> float:
    start = time.perf_counter()
    for i in range(0, len(rows), batch_size):
        generate(model, processor, rows[i : i + batch_size], decoding)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="an `mpcc prepare eval` build")
    p.add_argument("--shape", default="vision", choices=("tiny", "vision"))
    p.add_argument("--items", type=int, default=8, help="items, all their formats (8 rows each)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-single", action="store_true", help="leave out one-row-at-a-time (slow)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_throughput.json"))
    a = p.parse_args()
    rows = [row for _, row in eval_rows(a.data, EvalConfig(formats=EVAL_FORMATS, limit=a.items))]
    model, processor = bench_model(BenchConfig(shape=a.shape))
    model.eval()
    memo = ImageFeatureMemo(max_images=64)
    decoding = Decoding(max_new_tokens=a.max_new_tokens)
    generate(model, processor, rows[:2], decoding)  # warm-up
    variants = {"batched": (a.batch_size, False), "batched_reuse": (a.batch_size, True)}
    if not a.skip_single:
        variants = {"one_at_a_time": (1, False), **variants}
    runs = {name: [] for name in variants}
    for _ in range(a.repeats):
        for name, (batch, reuse) in variants.items():
            if reuse:
                memo.clear()  # every repeat starts without features
                memo.attach(model)
            runs[name].append(seconds(model, processor, rows, batch, decoding))
            if reuse:
                memo.detach(model)
    rate = {name: len(rows) / statistics.median(times) for name, times in runs.items()}
    result = {
        "command": f"python benchmarks/eval_throughput.py --shape {a.shape} --items {a.items} --batch-size "
        f"{a.batch_size} --max-new-tokens {a.max_new_tokens} --repeats {a.repeats}"
        + (" --skip-single" if a.skip_single else ""),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "machine": platform.platform(),
        "shape": a.shape,
        "shape_overrides": VISION_SHAPES["qwen2_5_vl"] if a.shape == "vision" else SHAPES[a.shape],
        "rows": len(rows),
        "items": a.items,
        "rows_per_s": rate,
        "reuse_speedup_vs_batched": rate["batched_reuse"] / rate["batched"],
        "seconds": runs,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    rows = [(name, f"{r:.2f}", f"{r / rate['batched']:.2f}x") for name, r in rate.items()]
    print("\n".join(markdown_table(("generation", "rows/s", "vs batched"), rows)))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
