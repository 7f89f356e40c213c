"""What each eval diagnostic costs: wall time, CPU time and peak memory of `mpcc eval` with one diagnostic
(and with `crm,evidence` together), relative to a plain eval of the same items, each run in a fresh
process (so peaks do not mix), medians of interleaved repeats. CPU time (the process's user + system)
moves less than wall time when other jobs share the machine; the load average before and after the runs
and torch's thread count are recorded, to tell a quiet machine's figures from a shared one's (there,
OMP_NUM_THREADS=1 keeps threads that spin waiting for a descheduled sibling out of the CPU seconds).

    python benchmarks/diagnostics_cost.py --data EVAL_BUILD --items 12 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mpcc.reports.tables import markdown_table

VARIANTS = ("plain", "blind", "context", "shape", "evidence", "crm", "crm,evidence")

_RUN = """
import json, os, sys, time
import torch
from mpcc.evaluation.config import EvalConfig
from mpcc.generation.decoding import Decoding
from mpcc.evaluation.harness import run_eval
model, data, out, items, tokens, variant = sys.argv[1:]
config = EvalConfig(
    formats=("mc4", "mc7", "yesno", "open"),
    limit=int(items),
    decoding=Decoding(max_new_tokens=int(tokens)),
    diagnostics=() if variant == "plain" else tuple(variant.split(",")),
)
start, cpu = time.perf_counter(), os.times()
run_eval(model, data, out, config)
seconds, used = time.perf_counter() - start, os.times()
cpu_seconds = used.user + used.system - cpu.user - cpu.system
peak_mb = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
threads = torch.get_num_threads()
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_mb": peak_mb, "threads": threads}))
"""


def run_once(model: str, data: Path, items: int, tokens: int, variant: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run(
            [sys.executable, "-c", _RUN, model, str(data), out, str(items), str(tokens), variant],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="an `mpcc prepare eval` build")
    p.add_argument("--model", default="tiny:qwen2_5_vl")
    p.add_argument("--items", type=int, default=12, help="items (all their formats: 8 rows each)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS, help="plain is always run")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/diagnostics_cost.json"))
    a = p.parse_args()
    variants = ("plain", *(v for v in a.variants if v != "plain"))
    runs = {v: [] for v in variants}
    load_before = os.getloadavg()
    for _ in range(a.repeats):  # interleaved, so drift on a shared machine hits every variant alike
        for variant in variants:
            runs[variant].append(run_once(a.model, a.data, a.items, a.max_new_tokens, variant))
    measures = ("seconds", "cpu_seconds", "peak_mb")
    median = {v: {k: statistics.median(r[k] for r in rs) for k in measures} for v, rs in runs.items()}
    plain = median["plain"]
    result = {
        "command": f"python benchmarks/diagnostics_cost.py --items {a.items} --max-new-tokens "
        f"{a.max_new_tokens} --repeats {a.repeats} --variants {' '.join(variants)}",
        "machine": platform.platform(),
        "load_average": {"before": load_before, "after": os.getloadavg()},  # 1, 5, 15 minutes
        "torch_threads": runs["plain"][0]["threads"],
        "model": a.model,
        "items": a.items,
        "median": median,
        "time_ratio": {v: m["seconds"] / plain["seconds"] for v, m in median.items()},
        "cpu_ratio": {v: m["cpu_seconds"] / plain["cpu_seconds"] for v, m in median.items()},
        "memory_ratio": {v: m["peak_mb"] / plain["peak_mb"] for v, m in median.items()},
        "runs": runs,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    rows = [
        (
            v,
            f"{m['seconds']:.1f}",
            f"{result['time_ratio'][v]:.2f}",
            f"{m['cpu_seconds']:.1f}",
            f"{result['cpu_ratio'][v]:.2f}",
            f"{m['peak_mb']:.0f}",
            f"{result['memory_ratio'][v]:.2f}",
        )
        for v, m in median.items()
    ]
    header = ("eval", "seconds (median)", "x plain", "CPU seconds", "x plain", "peak MB", "x plain")
    print("\n".join(markdown_table(header, rows)))
    print(f"load average (1, 5, 15 min) before {load_before}, after {result['load_average']['after']}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
