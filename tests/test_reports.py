"""mpcc.reports: the one table writer, and the layering that lets a report be rendered from JSON alone."""

from __future__ import annotations

import json
import subprocess
import sys

from mpcc.reports.bench import bench_markdown
from mpcc.reports.tables import MISSING, accuracy_n, fmt, markdown_table


def test_markdown_table_and_formats():
    assert markdown_table(("a", "b"), [(1, "x"), (fmt(None), fmt(0.5, ".1%"))]) == [
        "| a | b |",
        "|---|---|",
        "| 1 | x |",
        f"| {MISSING} | 50.0% |",
        "",
    ]
    assert accuracy_n({"accuracy": 2 / 3, "n": 3}) == "0.667 (n=3)" and accuracy_n(None) == MISSING


def test_bench_table_shows_what_was_not_measured():
    result = dict.fromkeys(("step_s", "generation_s", "scoring_s", "training_s"), 1.0)
    result |= {
        "generated_tokens_per_s": 10,
        "train_tokens_per_s": 20,
        "vision_calls": 1,
        "patches_encoded": 4,
    }
    result |= {"mfu": None, "peak_memory_gib": None, "speedup_vs_vanilla": None}
    config = {"shape": "tiny", "prompts": 2, "generations": 4, "max_new_tokens": 6, "image_size": [64, 48]}
    report = {"config": config | {"steps": 2, "warmup": 1}, "device": "cpu", "versions": {"trl": "1"}}
    text = bench_markdown(report | {"command": "mpcc bench", "gpu": False, "variants": {"mpcc": result}})
    assert (
        f"| mpcc | 1.000 | 1.000 | 1.0000 | 1.000 | 10 | 20 | 1 | 4 | {MISSING} | {MISSING} | {MISSING} |"
        in text
    )
    assert text.endswith("cache without compilation here.\n")


def test_reports_import_no_model_code_nor_the_layers_above():
    """Rendering needs the metrics dict only: no torch, no transformers, no evaluation/training/export."""
    code = (
        "import json, pkgutil, sys, mpcc.reports\n"
        "for m in pkgutil.iter_modules(mpcc.reports.__path__): __import__(f'mpcc.reports.{m.name}')\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)
    above = ("mpcc.evaluation", "mpcc.training", "mpcc.export", "mpcc.bench", "mpcc.demo", "mpcc.cli")
    assert not [m for m in loaded if m.split(".")[0] in ("torch", "transformers") or m.startswith(above)]
