"""Datasets that are not mpcc builds, through the same harness: a dataset saved with `save_to_disk`, or a
JSONL file (one JSON object a line) whose image column names image files. Each row is one item with an
image, a question, its answer and optionally evidence regions; `--image-column` and the other
`DatasetColumns` options (or a `--config` YAML of them) say which column holds what.

The answer format is each row's own, and parsing is as strict as for mpcc's formats:
- choices (a list of 2 to 10 options): format `mc`, answered by letter or by one option's exact text
  (`mpcc.evaluation.parsing`); the answer column holds the right option's text (as MathVista) or its
  letter, "B" or "(B)" (as BLINK);
- no choices and an answer of yes or no: format `yesno`, as mpcc's yes/no rows;
- otherwise free text, format `text`: normalised exact match, numbers compared by value.
Rows keep the dataset's order; `--limit N` takes the first N. Evidence regions are parsed (and checked)
by `mpcc.evaluation.grounding.annotated`. A saved dataset without the image column but with BLINK's
columns (question, choices, answer, image_1..) is a BLINK-style benchmark (`mpcc.evaluation.blink`).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mpcc.data import prompts
from mpcc.data.answer_options import LETTERS
from mpcc.data.masking import to_rgb
from mpcc.errors import InputError
from mpcc.evaluation.blink import BLINK_KEYS, blink_rows
from mpcc.evaluation.config import DatasetColumns, EvalConfig
from mpcc.evaluation.grounding.annotated import ANNOTATED_DIAGNOSTICS, parse_regions
from mpcc.evaluation.parsing import YES_NO
from mpcc.inputs import read_text
from mpcc.text.names import normalize

OPTIONAL = ("choices_column", "evidence_column")  # may be absent while they keep their default name


def load_records(data: Path, split: str | None) -> tuple[Iterable[dict], list[str], Path]:
    """(rows, column names, the folder relative image paths start from) of a JSONL file or a saved
    dataset (a DatasetDict's `split`, or its only split)."""
    if data.is_file():
        records = []
        for number, line in enumerate(read_text(data).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{data}: line {number} is not JSON ({e})") from e
            if not isinstance(record, dict):
                raise InputError(f"{data}: line {number} is not a JSON object")
            records.append(record)
        return records, list(dict.fromkeys(k for r in records for k in r)), data.parent
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(data))
    except (OSError, ValueError) as e:
        raise InputError(f"{data}: neither an mpcc build, a saved dataset nor a JSONL file ({e})") from e
    if isinstance(dataset, DatasetDict):
        if split is None and len(dataset) != 1:
            raise InputError(f"{data}: a DatasetDict of splits {sorted(dataset)}: choose one with --split")
        if split is not None and split not in dataset:
            raise InputError(f"{data}: no split {split!r} (splits: {', '.join(sorted(dataset))})")
        dataset = dataset[split or next(iter(dataset))]
    return dataset, dataset.column_names, data


def _check_columns(
    data: Path, names: list[str], columns: DatasetColumns, diagnostics: tuple[str, ...]
) -> None:
    """A one-line error for the first mapped column the data lacks."""
    for f in dataclasses.fields(columns):
        column = getattr(columns, f.name)
        if not f.name.endswith("_column") or column is None or column in names:
            continue
        needed = f.name == "evidence_column" and "evidence" in diagnostics
        if f.name in OPTIONAL and column == f.default and not needed:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        why = ": the evidence diagnostic needs evidence regions" if f.name == "evidence_column" else ""
        if f.name == "image_column":  # nor the image_1.. of a BLINK-style benchmark
            lacking = ", ".join(k for k in BLINK_KEYS if k not in names)
            why = f", and it is no BLINK-style benchmark either (no {lacking} column)" if lacking else ""
        raise InputError(f"{data}: no column {column!r} ({flag}){why}; columns: {', '.join(names)}")


def _image(value, base: Path, where: str) -> Image.Image:
    """An RGB image from an image feature, a path (relative to `base`) or {"bytes", "path"}."""
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, dict) and value.get("bytes"):
        source = io.BytesIO(value["bytes"])
    elif isinstance(value, (str, dict)) and (value if isinstance(value, str) else value.get("path")):
        source = base / (value if isinstance(value, str) else value["path"])
    else:
        raise InputError(f"{where}: no image (got {str(value)[:60]!r})")
    try:
        with Image.open(source) as image:
            return to_rgb(image)
    except (OSError, UnidentifiedImageError) as e:
        raise InputError(f"{where}: cannot read the image {str(value)[:80]!r} ({type(e).__name__})") from e


def _answer(answer, choices, where: str) -> tuple[str, list[str], str, str]:
    """(format, options, answer as graded, solution text) of one row."""
    if answer is None or not str(answer).strip():
        raise InputError(f"{where}: no answer")
    text = str(answer).strip()
    if not choices:
        fmt = "yesno" if normalize(text) in YES_NO else "text"
        return fmt, [], normalize(text) if fmt == "yesno" else text, text
    if not isinstance(choices, (list, tuple)) or not 2 <= len(choices) <= len(LETTERS):
        raise InputError(
            f"{where}: choices must be a list of 2 to {len(LETTERS)} options: {str(choices)[:80]}"
        )
    options = [str(c) for c in choices]
    named = [i for i, o in enumerate(options) if o.strip() == text]
    named = named or [i for i, o in enumerate(options) if normalize(o) == normalize(text)]
    letter = text.strip("()").upper()
    if len(named) == 1:
        index = named[0]
    elif len(letter) == 1 and letter in LETTERS[: len(options)]:
        index = LETTERS.index(letter)
    else:
        raise InputError(f"{where}: answer {text!r} is neither one option's text nor the letter of one")
    return "mc", options, LETTERS[index], options[index]


def _row(record: dict, number: int, data: Path, base: Path, columns: DatasetColumns) -> dict:
    """The eval row of the `number`-th record (from 1: the line of a JSONL file without blank lines)."""
    where = f"{data}: row {number}"
    question = record.get(columns.question_column)
    if question is None or not str(question).strip():
        raise InputError(f"{where}: no question (column {columns.question_column!r})")
    choices = record.get(columns.choices_column)
    fmt, options, answer, solution = _answer(record.get(columns.answer_column), choices, where)
    image = _image(record.get(columns.image_column), base, f"{where}, column {columns.image_column!r}")
    try:
        evidence = parse_regions(
            record.get(columns.evidence_column), columns.box_format, (image.height, image.width)
        )
    except InputError as e:
        raise InputError(f"{where}, column {columns.evidence_column!r}: {e}") from e
    item_id = record.get(columns.id_column) if columns.id_column else number
    subset = record.get(columns.subset_column) if columns.subset_column else None
    return {
        "prompt": prompts.conversation(prompts.dataset_question(str(question), fmt, options)),
        "image": image,
        "width": image.width,
        "height": image.height,
        "format": fmt,
        "options": options,
        "answer": answer,
        "solution": solution,
        "item_id": str(item_id),
        "difficulty": "n/a",
        "in_distribution": True,
        "supercategory": str(subset) if subset is not None else data.stem,
        "evidence": evidence,
    }


def dataset_rows(data: str | Path, config: EvalConfig) -> list[tuple[str, dict]]:
    """(prompt id, row) pairs of a dataset that is not an mpcc build (see the module docstring); the
    diagnostics that need an mpcc build are refused here, before anything runs."""
    data, columns = Path(data), config.columns
    records, names, base = load_records(data, columns.split)
    records = itertools.islice(records, config.limit)
    if columns.image_column not in names and data.is_dir() and all(k in names for k in BLINK_KEYS):
        if config.diagnostics:
            raise InputError(f"{data}: a BLINK-style dataset (no evidence regions) takes no --diagnostics")
        return [(str(i), row) for i, row in enumerate(blink_rows(records))]
    _check_columns(data, names, columns, config.diagnostics)
    refused = [d for d in config.diagnostics if d not in ANNOTATED_DIAGNOSTICS]
    if refused:
        raise InputError(
            f"{data}: --diagnostics {','.join(refused)} cannot run here: they need an mpcc build (a hidden "
            "object, its context objects and their categories); other datasets take "
            + ",".join(ANNOTATED_DIAGNOSTICS)
        )
    rows = [_row(record, i, data, base, columns) for i, record in enumerate(records, start=1)]
    repeated = [i for i, n in Counter(row["item_id"] for row in rows).items() if n > 1]
    if repeated:
        raise InputError(
            f"{data}: item id {repeated[0]!r} repeats (--id-column {columns.id_column}); ids are unique"
        )
    if not rows:
        raise InputError(f"{data}: no rows")
    return [(str(i), row) for i, row in enumerate(rows)]
