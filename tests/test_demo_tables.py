"""The demo's interval tables: chance beside each format, each group's own n, and a reading that claims a
difference only where the intervals are apart."""

from __future__ import annotations

import random
from pathlib import Path

from mpcc.data.synthetic import SCENES, outline_word, scene_trace, scene_type
from mpcc.demo import _reasoning_checks
from mpcc.demo_config import DemoConfig
from mpcc.evaluation.accuracy_tables import CHANCE, ReasoningCheck, demo_tables, estimates
from mpcc.rewards import trace_completion


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
    used = "accuracy with the masked image above the blank image's for: "
    assert used + "SFT, GRPO with prior sampling, plain GRPO" in text
    assert f"| chance (uniform guess) | {CHANCE['mc4']:.3f} | {CHANCE['mc7']:.3f} |" in text
    assert "held-out categories (OOD)" in text and "blank image" in text
    at_chance = demo_tables({"plain GRPO": _answers(0.25)}, {})
    assert at_chance[0].startswith("Reading: no run's mc4 is above chance")


def test_what_the_reasoning_reads_is_compared_with_a_blank_image():
    """The share of answers whose reasoning reads the scene right, masked vs blank, with intervals; the
    reading names only the runs whose intervals are apart."""

    def said(records: list[dict], p_right: float, seed: int) -> list[dict]:
        rng = random.Random(seed)
        return [
            {**r, "completion": "This is a kitchen." if rng.random() < p_right else "This is a street."}
            for r in records
        ]

    check = ReasoningCheck("the scene type (of six)", lambda a: "This is a kitchen" in a["completion"], 1 / 6)
    normal = {
        "sees": said(_answers(0.3, seed=1), 0.9, 1),
        "blind anyway": said(_answers(0.3, seed=2), 0.2, 2),
    }
    blind = {
        "sees": said(_answers(0.3, seed=3), 0.15, 3),
        "blind anyway": said(_answers(0.3, seed=4), 0.2, 4),
    }
    lines = demo_tables(normal, blind, checks=[check])
    text = "\n".join(lines)
    assert "more often with the masked image than with a blank one: sees;" in lines[0]
    table = text.split("## What the reasoning reads off the image: the scene type (of six)")[1]
    assert "| chance (uniform guess) | 0.167 | 0.167 |" in table
    sees = next(line for line in table.splitlines() if line.startswith("| sees |"))
    masked, blank = (float(cell.split()[0]) for cell in sees.strip("|").split("|")[1:3])
    assert masked > 0.8 and blank < 0.25 and "(n=480)" in sees
    nobody = demo_tables({"blind anyway": normal["blind anyway"]}, blind, checks=[check])[0]
    assert "no run's reasoning names the scene type (of six) more often with the masked image" in nobody


def test_the_demos_checks_pass_the_generators_own_traces_and_nothing_else():
    """A trace true of the held-out image passes both of the demo's checks; the same words about another
    image's scene, or an object of another outline, fail the check they get wrong."""
    config = DemoConfig(out=Path("unused"))
    scene_check, outline_check = _reasoning_checks(config)
    scenes = {scene_type(i, config.seed + 1): i for i in range(40)}  # one held-out image per scene type
    assert len(scenes) == len(SCENES)
    for scene, image_id in scenes.items():
        target = SCENES[scene].categories[0]
        other = next(c for c in SCENES[scene].categories if outline_word(c) != outline_word(target))
        answer = {"item_id": f"{image_id}-1", "category": target}
        answer["completion"] = trace_completion(scene_trace(scene, target, [], 0.03), target)
        assert scene_check.passes(answer) and outline_check.passes(answer)
        assert not outline_check.passes({**answer, "category": other})
        elsewhere = next(i for s, i in scenes.items() if s != scene)
        assert not scene_check.passes({**answer, "item_id": f"{elsewhere}-1"})
