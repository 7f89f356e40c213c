"""Other multiple-choice benchmarks through the same harness: BLINK-style rows (a question, 2+ choices,
the answer letter, one or several images) become eval rows of format `mc`."""

from __future__ import annotations

from collections.abc import Iterable

from mpcc.data import prompts
from mpcc.data.answer_options import LETTERS
from mpcc.errors import InputError

IMAGE_KEYS = ("image_1", "image_2", "image_3", "image_4")
BLINK_KEYS = ("question", "choices", "answer")  # every BLINK-style row has these


def _images(row: dict) -> list:
    images = row.get("images") or [row[k] for k in IMAGE_KEYS if row.get(k) is not None]
    if not images:
        raise InputError(
            f"BLINK row {row.get('idx', '?')}: no images (expected `images` or image_1..image_4)"
        )
    return list(images)


def blink_rows(rows: Iterable[dict]) -> list[dict]:
    """Eval rows for BLINK-style records: keys question, choices, answer ("B" or "(B)"), images or
    image_1..image_4, optional idx and sub_task (reported as the supercategory)."""
    out = []
    for i, row in enumerate(rows):
        choices = [str(c) for c in row["choices"]]
        letter = str(row["answer"]).strip().strip("()").upper()
        if len(choices) < 2 or letter not in LETTERS[: len(choices)]:
            raise InputError(
                f"BLINK row {row.get('idx', i)}: answer {row['answer']!r} is not one of "
                f"{len(choices)} choices"
            )
        images = _images(row)
        question = prompts.dataset_question(row["question"], "mc", choices)
        user = [{"type": "image", "text": None} for _ in images] + [{"type": "text", "text": question}]
        out.append(
            {
                "prompt": [prompts.conversation(question)[0], {"role": "user", "content": user}],
                "images": images,
                "format": "mc",
                "options": choices,
                "answer": letter,
                "item_id": str(row.get("idx", i)),
                "difficulty": "n/a",
                "in_distribution": True,
                "supercategory": str(row.get("sub_task", "blink")),
                "solution": choices[LETTERS.index(letter)],
            }
        )
    return out
