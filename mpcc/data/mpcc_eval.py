"""The MPCC authors' benchmark file layout: import it as eval items, export our eval builds to it.

Layout: {"easy": [item, ...], "middle": [...], "hard": [...]}, each item with `file_name`, `bbox`
[x, y, w, h], `category_name`, `choose_negtive_confusion` (2 names), `judgement_negtive_confusion`
(2 names) and `irrelevant_negtive` (>= 2 names); the misspelling "negtive" is theirs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mpcc.data.answer_options import Distractors
from mpcc.data.coco import CocoSource
from mpcc.data.difficulty import LEVELS
from mpcc.data.render import load_dataset
from mpcc.errors import InputError
from mpcc.files import write_text_atomic
from mpcc.inputs import read_json
from mpcc.options import option

MATCH_IOU = 0.9  # an item's box must overlap its COCO annotation's box this much


@dataclass(frozen=True)
class EvalItem:
    ann: dict
    level: str
    distractors: Distractors


def box_iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def read_items(path: Path, source: CocoSource) -> list[EvalItem]:
    """Items of an MPCC-Eval file matched to `source`'s annotations (same image, category, box)."""
    try:
        data = read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read MPCC-Eval JSON: {e}") from e
    if not isinstance(data, dict) or not any(lv in data for lv in LEVELS):
        raise InputError(f"{path}: expected an object with keys {LEVELS}")
    coco = source.coco
    by_file = {im["file_name"]: im["id"] for im in coco.imgs.values()}
    names = source.category_names
    items = []
    for lv in LEVELS:
        for i, item in enumerate(data.get(lv, [])):
            record = f"{lv}[{i}] ({item.get('file_name') if isinstance(item, dict) else item!r})"
            try:
                image_id = by_file[item["file_name"]]
                bbox, name = item["bbox"], item["category_name"]
                candidates = [a for a in coco.imgToAnns[image_id] if names[a["category_id"]] == name]
                best = max(candidates, key=lambda a: box_iou(a["bbox"], bbox), default=None)
                if best is None or box_iou(best["bbox"], bbox) < MATCH_IOU:
                    raise LookupError(f"no {name!r} annotation with box {bbox}")
                d = Distractors(
                    tuple(item["choose_negtive_confusion"][:2]),
                    tuple(item["judgement_negtive_confusion"][:2]),
                    tuple(item["irrelevant_negtive"][:2]),
                )
            except (KeyError, TypeError, LookupError) as e:
                source.report.add(path, record, "unmatched_item", f"{type(e).__name__}: {e}")
                continue
            items.append(EvalItem(best, lv, d))
    return items


EXPORT_FORMATS = ("mpcc-eval", "lmms-eval")


@dataclass(frozen=True)
class ExportItemsJob:
    """`mpcc export-mpcc-eval`: an eval build in the authors' MPCC-Eval JSON layout, or as an lmms-eval
    task folder (mpcc.evaluation.lmms_eval)."""

    dataset: Path = option(help="an eval dataset written by `mpcc prepare eval`", positional=True)
    out: Path = option(help="JSON file to write (lmms-eval: the task folder, written whole)")
    format: str = option(
        "mpcc-eval",
        "mpcc-eval: the authors' JSON layout; lmms-eval: a task folder (mpcc_eval.yaml, utils.py, the rows "
        "with their images) for `lmms-eval --tasks mpcc_eval --include_path OUT`",
        choices=EXPORT_FORMATS,
    )
    limit: int | None = option(None, "lmms-eval: only the first N items (all their rows)", minimum=1)


def export_items(dataset_dir: str | Path, out: str | Path) -> dict[str, int]:
    """Write an eval build in the authors' layout (plus our ids); returns items per level."""
    ds = load_dataset(dataset_dir).select_columns(
        ["item_id", "image_id", "ann_id", "file_name", "bbox", "category", "difficulty", "distractors"]
    )
    levels: dict[str, list] = {lv: [] for lv in LEVELS}
    seen = set()
    for row in ds:
        if row["item_id"] in seen:
            continue
        seen.add(row["item_id"])
        d = row["distractors"]
        levels[row["difficulty"]].append(
            {
                "file_name": row["file_name"],
                "image_id": row["image_id"],
                "ann_id": row["ann_id"],
                "bbox": row["bbox"],
                "category_name": row["category"],
                "choose_negtive_confusion": d["choice"],
                "judgement_negtive_confusion": d["judgement"],
                "irrelevant_negtive": d["irrelevant"],
            }
        )
    write_text_atomic(out, json.dumps(levels, indent=1, ensure_ascii=False) + "\n")
    return {lv: len(v) for lv, v in levels.items()}
