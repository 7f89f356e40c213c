"""The demo's interval tables: chance beside each format, each group's own n, and a reading that claims a
difference only where the intervals are apart."""

from __future__ import annotations

import random

from mpcc.evaluation.accuracy_tables import CHANCE, demo_tables, estimates


def _answers(p_correct: float, items: int = 60, seed: int = 0) -> list[dict]:
    """Eight answers per item (mc4, mc7, five yes/no, open), every sixth item out of distribution."""
    rng = random.Random(seed)
    records = []
    for i in range(items):
        for fmt in ("mc4", "mc7", *["yesno"] * 5, "open"):
            records.append(
                {
                    "item_id": f"item{i}",
                    "format": fmt,
                    "difficulty": ("easy", "middle", "hard")[i % 3],
                    "in_distribution": i % 6 != 0,
                    "answer": "no" if fmt == "yesno" and rng.random() < 0.8 else "A",
                    "correct": rng.random() < p_correct,
                }
            )
    return records


def test_each_group_has_its_own_count_and_an_interval():
    est = estimates(_answers(0.5))
    assert est["mc4"].n == 60 and est["yesno"].n == 300 and est["all"].n == 480
    assert est["out"].n == 80 and est["out"].items == 10 and est["easy/mc4"].n == 20
    assert all(e.low <= e.value <= e.high for e in est.values() if e.enough)


def test_tables_show_chance_and_read_only_what_the_intervals_allow():
    normal = {
        "SFT": _answers(0.9, seed=1),
        "GRPO with prior sampling": _answers(0.9, seed=2),
        "plain GRPO": _answers(0.9, seed=3),
    }
    blind = {name: _answers(0.1, seed=4) for name in normal}
    lines = demo_tables(normal, blind, pair=("GRPO with prior sampling", "plain GRPO"))
    text = "\n".join(lines)
    assert lines[0].startswith(
        "Reading: mc4 above chance (interval above 0.25): SFT, GRPO with prior sampling"
    )
    assert "does not differ from (intervals overlap) plain GRPO" in text
    assert "masked image above blank image for: SFT, GRPO with prior sampling, plain GRPO" in text
    assert f"| chance (uniform guess) | {CHANCE['mc4']:.3f} | {CHANCE['mc7']:.3f} |" in text
    assert "held-out categories (OOD)" in text and "blank image" in text
    at_chance = demo_tables({"plain GRPO": _answers(0.25)}, {})
    assert at_chance[0].startswith("Reading: no run's mc4 is above chance")
