"""What the uncertainty monitor's report costs (`mpcc.evaluation.grounding.monitor.uncertainty_report`: every
interval a bootstrap, the model refitted per resample): CPU and wall seconds on synthetic answers (four per
item, tasks taking turns, half of them with blindness hazardous), medians of repeats; the machine's load
average is printed with them, for a shared machine slows both.

    python benchmarks/monitor_cost.py --answers 500,3000 --tasks 6 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from mpcc.evaluation.grounding.monitor import FIT_RESAMPLES, uncertainty_report
from mpcc.evaluation.intervals import RESAMPLES
from mpcc.reports.tables import markdown_table


def answers(n: int, tasks: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    h, v, noise = rng.random(n), rng.random(n), rng.random(n)
    task = np.arange(n) % tasks
    blind = (task % 2 == 0) & (h < 0.5) & (v < 0.3)  # hazardous in every other task
    wrong = rng.random(n) < np.where(blind, 0.85, 0.05 + 0.3 * h)
    return [
        {"item_id": i // 4, "task": f"task{task[i]}", "correct": not wrong[i], "entropy_full": h[i],
         "entropy_answer": 0.5 * h[i] + 0.3 * noise[i], "evidence_share": v[i]}
        for i in range(n)
    ]  # fmt: skip


def timed(records: list[dict]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    uncertainty_report(records)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", default="500,3000", help="comma-separated answer counts")
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for n in (int(x) for x in args.answers.split(",")):
        records = answers(n, args.tasks)
        runs = [timed(records) for _ in range(args.repeats)]
        cpu, wall = (statistics.median(run[k] for run in runs) for k in (0, 1))
        rows.append((n, args.tasks, f"{cpu:.2f}", f"{wall:.2f}", f"{os.getloadavg()[0]:.1f}"))
    print(
        f"{RESAMPLES} resamples per interval, {FIT_RESAMPLES} refits per coefficient; {os.cpu_count()} CPUs"
    )
    print("\n".join(markdown_table(("answers", "tasks", "CPU s", "wall s", "load average"), rows)))


if __name__ == "__main__":
    main()
