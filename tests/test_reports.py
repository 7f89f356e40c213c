"""mpcc.reports: the one table writer, and the layering that lets a report be rendered from JSON alone."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from mpcc.reports import grounding
from mpcc.reports.bench import bench_markdown
from mpcc.reports.tables import MISSING, accuracy_n, estimate, fmt, markdown_table


def test_markdown_table_and_formats():
    assert markdown_table(("a", "b"), [(1, "x"), (fmt(None), fmt(0.5, ".1%"))]) == [
        "| a | b |",
        "|---|---|",
        "| 1 | x |",
        f"| {MISSING} | 50.0% |",
        "",
    ]
    assert accuracy_n({"accuracy": 2 / 3, "n": 3}) == "0.667 (n=3)" and accuracy_n(None) == MISSING


def test_an_estimate_prints_its_interval_and_n_or_says_too_few():
    assert (
        estimate({"value": 0.5, "low": 0.4, "high": 0.61, "n": 20, "items": 9})
        == "0.500 [0.400, 0.610] (n=20)"
    )
    assert estimate({"value": 0.5, "low": None, "high": None, "n": 5, "items": 3}) == "too few answers (n=5)"
    assert estimate(None) == MISSING


def _evidence_records(n: int, level: str, seed: int) -> list[dict]:
    """Answers of a model with a steady evidence share, rendered as a run's grounding section would be."""
    from mpcc.evaluation.grounding.evidence import reasoning_measures

    rng = np.random.default_rng(seed)
    records = []
    for item in range(n):
        image = rng.uniform(0.1, 0.3, 40)
        mass = np.stack([image, image * rng.uniform(0.1, 0.3, 40), image / 10])
        profile = {"layers": [0, 1], "share": rng.uniform(0.1, 0.3, (3, 2, 4)).tolist()}
        records.append(
            {
                **reasoning_measures(mass, (100, 20, 5)),
                "item_id": f"{level}{item}",
                "difficulty": level,
                "entropy_full": float(rng.uniform(1, 3)),
                "evidence_overlap": 0.3,
                "tokens": {"image": 100, "evidence": 20, "target": 5},
                "profile": profile,
            }
        )
    return records


def test_grounding_tables_print_length_free_estimates_and_raw_masses_apart(tmp_path):
    """The evidence section: each length-free claim as `value [low, high] (n=...)`, "too few answers"
    for a level with few, the raw masses in their own table labelled raw, the layer x head profile."""
    from mpcc.evaluation.grounding.evidence import summarise_evidence

    records = _evidence_records(30, "easy", 0) + _evidence_records(4, "hard", 1)
    evidence = json.loads(json.dumps(summarise_evidence(records)))  # rendered from JSON alone
    text = "\n".join(grounding._evidence_tables(evidence))
    collapse = evidence["all"]["collapse_ratio"]
    assert f"{collapse['value']:.4f} [{collapse['low']:.4f}, {collapse['high']:.4f}] (n=34)" in text
    hard = next(line for line in text.splitlines() if line.startswith("| hard | 4 |"))
    assert hard.count("too few answers (n=4)") == 4  # share, lift, overlap, collapse ratio
    assert (
        "| level | image mass (raw) | evidence mass (raw) | target mass (raw) | collapse ratio (raw mass)"
        in text
    )
    assert "| 0 | 1.0" in text or "| 0 | 0.9" in text  # layer 0's mean lift per third, about 1
    grounding._evidence_charts(evidence, tmp_path)
    for chart in (grounding.EVIDENCE_CHART, grounding.PROFILE_CHART):
        with Image.open(tmp_path / chart) as image:
            assert image.format == "PNG"


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


def test_compare_leaves_out_evidence_measured_before_the_length_free_measures(tmp_path):
    """A run from before (its collapse ratio and curve were raw mass) shows no evidence measures rather
    than a raw ratio under the length-free heading; the current run's show with their intervals."""
    from mpcc.evaluation.grounding.evidence import summarise_evidence

    current = json.loads(json.dumps(summarise_evidence(_evidence_records(20, "easy", 0))))
    cell = {"n": 9, "evidence_mass": 0.04, "collapse_ratio": 0.764, "curve": [0.04] * 10}
    before = {"all": cell, "per_level": {}, "bins": current["bins"]}
    sections = {"now": {"evidence": current}, "before": {"evidence": before}}
    lines = grounding.compare_grounding(sections, tmp_path)
    row = {line.split(" | ")[0]: line for line in lines if line.startswith("| ")}
    assert estimate(current["all"]["collapse_ratio"]) in row["| now"] and "0.764" not in row["| before"]
    assert row["| before"].startswith(f"| before | {MISSING} | {MISSING} | {MISSING} |")
    with Image.open(tmp_path / grounding.EVIDENCE_CHART) as chart:
        assert chart.format == "PNG"
