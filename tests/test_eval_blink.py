"""A BLINK-style benchmark (question, choices, answer letter, several images) through `mpcc eval`."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset
from PIL import Image

from mpcc.cli import main
from mpcc.evaluation.blink import blink_rows


def _fixture(path):
    rows = [
        {
            "idx": "a",
            "question": "Which image is brighter?",
            "choices": ["the first", "the second"],
            "answer": "(B)",
            "image_1": Image.new("RGB", (64, 48), (20, 20, 20)),
            "image_2": Image.new("RGB", (64, 48), (240, 240, 240)),
            "sub_task": "brightness",
        },
        {
            "idx": "b",
            "question": "What colour is the square?",
            "choices": ["red", "green", "blue"],
            "answer": "C",
            "image_1": Image.new("RGB", (64, 48), (0, 0, 255)),
            "image_2": None,
            "sub_task": "colour",
        },
    ]
    Dataset.from_list(rows).save_to_disk(str(path))
    return rows


def test_blink_rows_shape_the_prompt(tmp_path):
    rows = blink_rows(_fixture(tmp_path / "blink"))
    first, second = rows
    assert first["format"] == "mc" and first["answer"] == "B" and first["solution"] == "the second"
    assert len(first["images"]) == 2 and len(second["images"]) == 1
    parts = first["prompt"][1]["content"]
    assert [p["type"] for p in parts] == ["image", "image", "text"]
    assert "A. the first\nB. the second" in parts[-1]["text"]
    with pytest.raises(ValueError, match="not one of 2 choices"):
        blink_rows([{**_fixture(tmp_path / "again")[0], "answer": "D"}])


def test_mpcc_eval_runs_a_blink_benchmark(tmp_path):
    _fixture(tmp_path / "blink")
    assert (
        main(
            [
                "eval",
                "--model",
                "tiny:qwen2_5_vl",
                "--data",
                str(tmp_path / "blink"),
                "--out",
                str(tmp_path / "out"),
                "--max-new-tokens",
                "8",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["n"] == 2 and set(metrics["per_format"]) == {"mc"}
    assert set(metrics["per_supercategory"]) == {"brightness", "colour"}
