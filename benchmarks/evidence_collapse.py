"""Evidence collapse, length-free and raw, of models on the same eval items: the collapse ratio on the
evidence share of image attention beside the raw-mass ratio, each with its item-bootstrap interval, and
the lift and top-k overlap against chance. A random-weight model should show no collapse on the first:
the raw ratio falls anyway, because the keys grow along the reasoning.

    python benchmarks/evidence_collapse.py --data runs/demo/data/eval --items 60 \\
        --model start=tiny:qwen2_5_vl --model sft=runs/demo/sft --model grpo=runs/demo/grpo

Each model is evaluated as `make demo` evaluates (every format, 96 new tokens) with `--diagnostics
evidence`, into OUT/<name> (a rerun resumes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mpcc.reports.tables import estimate, fmt, markdown_table

NEW_TOKENS = 96  # as mpcc.demo evaluates


def evaluate(model: str, data: Path, out: Path, items: int) -> dict:
    """The run's evidence section (all answers), evaluated as the demo does with `evidence` only."""
    from mpcc.evaluation.config import EVAL_FORMATS, EvalConfig
    from mpcc.evaluation.harness import run_eval
    from mpcc.generation.decoding import Decoding

    config = EvalConfig(
        formats=EVAL_FORMATS,
        diagnostics=("evidence",),
        limit=items,
        decoding=Decoding(max_new_tokens=NEW_TOKENS),
    )
    run_eval(model, data, out, config)
    return json.loads((out / "metrics.json").read_text())["grounding"]["evidence"]["all"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="an eval build (the demo's: runs/demo/data/eval)")
    p.add_argument("--items", type=int, default=60, help="eval items (the demo's default)")
    p.add_argument("--model", action="append", default=[], help="NAME=MODEL (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs/evidence_collapse"))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/evidence_collapse.json"))
    a = p.parse_args()
    models = dict(spec.split("=", 1) for spec in a.model or ["start=tiny:qwen2_5_vl"])
    cells = {name: evaluate(model, a.data, a.out / name, a.items) for name, model in models.items()}
    rows = [
        (
            name, c["n"], estimate(c["collapse_ratio"], ".4f"), estimate(c["collapse_ratio_raw"]),
            estimate(c["evidence_share"]), estimate(c["evidence_lift"], ".4f"),
            f"{estimate(c['evidence_overlap'])} vs {fmt(c['overlap_chance'])}",
        )
        for name, c in cells.items()
    ]  # fmt: skip
    header = (
        "model", "answers", "collapse ratio", "collapse ratio (raw mass)", "evidence share", "evidence lift",
        "top-k overlap vs chance",
    )  # fmt: skip
    print("\n".join(markdown_table(header, rows)))
    result = {"data": str(a.data), "items": a.items, "models": models, "evidence": cells}
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.results}")


if __name__ == "__main__":
    main()
