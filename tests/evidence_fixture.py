"""A dataset with evidence regions in the shape MathVista / HallusionBench-with-boxes would have, drawn with
PIL: each image holds 2 or 3 shapes (circle, square, triangle) of distinct shapes and colours, and each row
asks one question about it with the regions that answer it.

Questions cycle through four tasks (the `task` column):
- `shape`, multiple choice as MathVista (`choices`, the answer is the right option's text): "What shape
  is the red object?"; evidence: that object;
- `colour`, free text: "What colour is the triangle?"; evidence: the triangle;
- `count`, a free-form integer: "How many shapes are in the image?"; evidence: every shape;
- `existence`, yes/no as HallusionBench: "Is there a blue square in the image?", half of them yes;
  evidence: the object of that colour (which is, or refutes, the shape asked about).
Evidence is written three ways, for the same pixels: `evidence` (boxes, x0 y0 x1 y1 in pixels),
`evidence_polygon` (flat polygons: the square's corners, the triangle's, a 24-gon for the circle) and
`evidence_rle` (COCO RLE of the drawn shape).

    python tests/evidence_fixture.py OUT [--rows 300] [--seed 0]

writes OUT/shapes.jsonl beside OUT/images/*.png, and OUT/shapes_disk (the same rows, `save_to_disk`,
images embedded).
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

SHAPES = ("circle", "square", "triangle")
DISTRACTORS = ("star", "hexagon")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SIZES = ((320, 240), (256, 256), (300, 200))
TASKS = ("shape", "colour", "count", "existence")


def _polygon(shape: str, box: tuple[int, int, int, int]) -> list[float]:
    x0, y0, x1, y1 = box
    if shape == "square":
        return [x0, y0, x1, y0, x1, y1, x0, y1]
    if shape == "triangle":
        return [(x0 + x1) / 2, y0, x1, y1, x0, y1]
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    return [
        v
        for k in range(24)
        for v in (cx + r * math.cos(k * math.pi / 12), cy + r * math.sin(k * math.pi / 12))
    ]


def _draw(draw: ImageDraw.ImageDraw, shape: str, box, colour) -> None:
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
    elif shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=colour)


def _boxes(rng: random.Random, count: int, size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """`count` square boxes of side 60-90 px inside the image, 6 px apart: at least one image token each
    even at the tiny test model's resolution (cells of up to 40 px here)."""
    width, height = size
    while True:
        boxes = []
        for _ in range(count):
            side = rng.randint(60, 90)
            x, y = rng.randint(4, width - side - 4), rng.randint(4, height - side - 4)
            boxes.append((x, y, x + side, y + side))
        apart = all(
            a[2] + 6 <= b[0] or b[2] + 6 <= a[0] or a[3] + 6 <= b[1] or b[3] + 6 <= a[1]
            for i, a in enumerate(boxes)
            for b in boxes[i + 1 :]
        )
        if apart:
            return boxes


def _scene(rng: random.Random) -> tuple[Image.Image, list[dict]]:
    size = rng.choice(SIZES)
    count = rng.choice((2, 3))
    shapes = rng.sample(SHAPES, count)
    colours = rng.sample(list(COLOURS), count)
    image = Image.new("RGB", size, (235, 235, 235))
    objects = []
    for shape, colour, box in zip(shapes, colours, _boxes(rng, count, size)):
        _draw(ImageDraw.Draw(image), shape, box, COLOURS[colour])
        drawn = Image.new("L", size, 0)
        _draw(ImageDraw.Draw(drawn), shape, box, 255)
        rle = mask_utils.encode(np.asfortranarray((np.asarray(drawn) > 0).astype(np.uint8)))
        rle = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        objects.append(
            {"shape": shape, "colour": colour, "box": list(box), "polygon": _polygon(shape, box), "rle": rle}
        )
    return image, objects


def _question(
    task: str, objects: list[dict], rng: random.Random
) -> tuple[str, list[str] | None, str, list[dict]]:
    """(question, choices or None, answer, the objects that are its evidence)."""
    asked = rng.choice(objects)
    if task == "shape":
        others = [s for s in (*SHAPES, *DISTRACTORS) if s != asked["shape"]]
        choices = [asked["shape"], *rng.sample(others, 3)]
        rng.shuffle(choices)
        return f"What shape is the {asked['colour']} object?", choices, asked["shape"], [asked]
    if task == "colour":
        return f"What colour is the {asked['shape']}?", None, asked["colour"], [asked]
    if task == "count":
        return "How many shapes are in the image?", None, str(len(objects)), objects
    shape = asked["shape"] if rng.random() < 0.5 else rng.choice([s for s in SHAPES if s != asked["shape"]])
    answer = "yes" if shape == asked["shape"] else "no"
    return f"Is there a {asked['colour']} {shape} in the image?", None, answer, [asked]


def write_shapes(out: str | Path, rows: int = 300, seed: int = 0, disk: bool = True) -> Path:
    """Write the dataset under `out` (see the module docstring); returns the JSONL file."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records, images = [], []
    for i in range(rows):
        image, objects = _scene(rng)
        task = TASKS[i % len(TASKS)]
        question, choices, answer, evidence = _question(task, objects, rng)
        name = f"images/{i:05d}.png"
        image.save(out / name)
        images.append(image)
        records.append(
            {
                "pid": f"s{i:05d}",
                "image": name,
                "question": question,
                "choices": choices,
                "answer": answer,
                "question_type": "multi_choice"
                if choices
                else ("yes_no" if task == "existence" else "free_form"),
                "answer_type": "integer" if task == "count" else "text",
                "task": task,
                "evidence": [o["box"] for o in evidence],
                "evidence_polygon": [o["polygon"] for o in evidence],
                "evidence_rle": [o["rle"] for o in evidence],
            }
        )
    path = out / "shapes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    if disk:
        from datasets import Dataset

        Dataset.from_list([{**r, "image": im} for r, im in zip(records, images)]).save_to_disk(
            str(out / "shapes_disk")
        )
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_shapes(args.out, args.rows, args.seed))
