"""`mpcc annotate import`: traces made elsewhere, joined to a train build's rows and verified.

Input: a JSON list or JSONL of objects, one trace each. Accepted layouts:
- ours: `ann_id` (+ optional `image_id`) and `reasoning` (or `trace`);
- the MPCC authors': the image (`file_name`, `image` or `image_path`: a file name, or `image_id`),
  the object (`ann_id` / `annotation_id`, or `bbox` [x, y, w, h] + `category_name` / `category`)
  and the trace under `cot_data` (a string, or an object holding it under `think`, `reasoning`,
  `cot`, `trace` or `text`).
A trace is either the full answer `<think>…</think><answer>…</answer>` (verified as is) or only the
reasoning (verified as `<think> {trace}</think><answer>{solution}</answer>`, the form SFT trains on
open rows; other rows put their letter or yes/no after the same reasoning).
Optional provenance fields: `teacher` (or `model`), `prompt_version`, `date`.

Joining: by annotation id when given (a given `image_id` must agree); else by image (id, or file name
compared without directories) and box (IoU >= 0.9 with the row's box; `category`, when given, must be
the row's solution), or, without a box, by the image's only row of that category. Several traces for
one row are tried in file order and the first verified one is kept.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mpcc.annotation.output import check_paths, row_result, tally, utc_now, write_annotated
from mpcc.annotation.verify import verify
from mpcc.data.mpcc_eval import MATCH_IOU, box_iou
from mpcc.data.render import load_dataset
from mpcc.errors import InputError
from mpcc.inputs import file_sha256, read_text
from mpcc.rewards import trace_completion
from mpcc.text.answers import THINK_OPEN
from mpcc.text.names import normalize

logger = logging.getLogger(__name__)

TRACE_KEYS = ("reasoning", "trace", "cot_data")
COT_KEYS = ("think", "reasoning", "cot", "trace", "text")
ANN_KEYS = ("ann_id", "annotation_id")
FILE_KEYS = ("file_name", "image", "image_path")
CATEGORY_KEYS = ("category_name", "category")
UNMATCHED_FILE = "unmatched.json"


@dataclass(frozen=True)
class Trace:
    line: int  # 1-based position in the file (line of JSONL, item of a JSON list)
    text: str
    ann_id: int | None = None
    image_id: int | None = None
    file_name: str | None = None
    bbox: tuple[float, ...] | None = None
    category: str | None = None
    teacher: str | None = None
    prompt_version: str | None = None
    date: str | None = None


@dataclass
class ImportResult:
    path: Path
    counts: dict  # rows, kept, rejected by reason (rows without a trace: no_trace)
    traces: int  # traces read
    matched: int  # traces joined to a row
    unmatched_traces: dict  # reason -> count
    rows_without_trace: int
    unmatched_file: Path


def _first(item: dict, keys: tuple[str, ...]):
    return next((item[k] for k in keys if item.get(k) is not None), None)


def _trace_text(item: dict, where: str) -> str:
    value = _first(item, TRACE_KEYS)
    if isinstance(value, dict):
        value = _first(value, COT_KEYS)
    if not isinstance(value, str) or not value.strip():
        raise InputError(
            f"{where}: no trace: expected a non-empty string under one of {TRACE_KEYS} "
            f"(or cot_data as an object with one of {COT_KEYS})"
        )
    return value.strip()


def _int_or_none(value, name: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise InputError(f"{where}: {name} must be an integer, got {value!r}")
    return int(value)


def _parse(item, number: int, where: str, default_teacher: str) -> Trace:
    if not isinstance(item, dict):
        raise InputError(f"{where}: expected an object, got {type(item).__name__}")
    image = _first(item, FILE_KEYS)
    bbox = item.get("bbox")
    if bbox is not None and (
        not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox)
    ):
        raise InputError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
    return Trace(
        line=number,
        text=_trace_text(item, where),
        ann_id=_int_or_none(_first(item, ANN_KEYS), "ann_id", where),
        image_id=_int_or_none(item.get("image_id"), "image_id", where),
        file_name=PurePosixPath(str(image).replace("\\", "/")).name if isinstance(image, str) else None,
        bbox=tuple(float(v) for v in bbox) if bbox is not None else None,
        category=_first(item, CATEGORY_KEYS),
        teacher=_first(item, ("teacher", "model")) or default_teacher,
        prompt_version=item.get("prompt_version"),
        date=item.get("date"),
    )


def read_traces(path: str | Path) -> list[Trace]:
    """Traces from a JSON list or a JSONL file; errors name the file and the line (or list item)."""
    path = Path(path)
    try:
        text = read_text(path)
    except OSError as e:
        raise InputError(f"cannot read the traces file: {e}") from e
    default_teacher = f"import:{path.name}"
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from e
        numbered = list(enumerate(items, 1))
        label = "item"
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: line {number} is not JSON ({e.msg})") from e
        label = "line"
    if not numbered:
        raise InputError(f"{path}: no traces (expected a JSON list or JSONL of objects)")
    return [_parse(item, number, f"{path}: {label} {number}", default_teacher) for number, item in numbered]


class RowIndex:
    """The build's rows by annotation id and by image (id and file name), for joining traces."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.by_ann = {r["ann_id"]: i for i, r in enumerate(rows)}
        self.by_image_id: dict[int, list[int]] = defaultdict(list)
        self.by_file: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            self.by_image_id[r["image_id"]].append(i)
            self.by_file[PurePosixPath(r["file_name"]).name].append(i)

    def match(self, trace: Trace) -> tuple[int | None, str | None]:
        """(row index, None) or (None, why not)."""
        if trace.ann_id is not None:
            i = self.by_ann.get(trace.ann_id)
            if i is None:
                return None, "no_row"
            if trace.image_id is not None and trace.image_id != self.rows[i]["image_id"]:
                return None, "image_mismatch"
            return i, None
        if trace.image_id is not None:
            candidates = self.by_image_id.get(trace.image_id, [])
        elif trace.file_name is not None:
            candidates = self.by_file.get(trace.file_name, [])
        else:
            return None, "no_key"
        if not candidates:
            return None, "no_image"
        if trace.category is not None:
            candidates = [
                i for i in candidates if normalize(self.rows[i]["solution"]) == normalize(trace.category)
            ]
        if trace.bbox is not None:
            best = max(candidates, key=lambda i: box_iou(self.rows[i]["bbox"], trace.bbox), default=None)
            if best is None or box_iou(self.rows[best]["bbox"], trace.bbox) < MATCH_IOU:
                return None, "no_box_match"
            return best, None
        if trace.category is None:
            return None, "no_key"
        if len(candidates) != 1:
            return None, "ambiguous" if candidates else "no_row"
        return candidates[0], None


def _attempt(trace: Trace, solution: str, min_words: int | None, max_words: int | None) -> dict:
    text = trace.text if THINK_OPEN in trace.text else trace_completion(trace.text, solution)
    verdict = verify(text, solution, min_words, max_words)
    return {
        "ok": verdict.ok,
        "reason": verdict.reason,
        "reasoning": verdict.reasoning,
        "output": text,
        "teacher": trace.teacher,
        "mode": "import",
        "prompt_version": trace.prompt_version,
        "date": trace.date or utc_now(),
    }


def _join(traces: list[Trace], index: RowIndex) -> tuple[dict[int, list[Trace]], list[dict]]:
    """(the traces of each matched row, in file order; the traces that match no row, with the reason)."""
    per_row: dict[int, list[Trace]] = defaultdict(list)
    unmatched = []
    for trace in traces:
        i, why = index.match(trace)
        if i is None:
            where = {"ann_id": trace.ann_id, "image_id": trace.image_id, "file_name": trace.file_name}
            unmatched.append({"line": trace.line, "reason": why, **where})
        else:
            per_row[i].append(trace)
    return per_row, unmatched


def _verify_rows(
    index: RowIndex, per_row: dict[int, list[Trace]], min_words: int | None, max_words: int | None
) -> dict:
    """Each row's result: its traces verified in file order until one passes (the rest are not tried)."""
    results = {}
    for i, row in enumerate(index.rows):
        attempts = []
        for trace in per_row.get(i, []):
            attempts.append(_attempt(trace, row["solution"], min_words, max_words))
            if attempts[-1]["ok"]:
                break
        results[row["ann_id"]] = row_result(attempts)
    return results


def import_traces(
    file: str | Path,
    data: str | Path,
    out: str | Path,
    min_words: int | None = None,
    max_words: int | None = None,
    overwrite: bool = False,
) -> ImportResult:
    """Join the traces in `file` to the train build `data`, verify them and write `out`, with the
    unmatched traces and rows listed in `out/unmatched.json`."""
    source, out = Path(data), Path(out)
    check_paths(source, out, overwrite)
    traces = read_traces(file)
    columns = ("ann_id", "image_id", "file_name", "bbox", "solution")
    table = load_dataset(source).select_columns(list(columns))[:]
    index = RowIndex([dict(zip(columns, values)) for values in zip(*(table[c] for c in columns))])

    per_row, unmatched = _join(traces, index)
    results = _verify_rows(index, per_row, min_words, max_words)
    rows_without = [r["ann_id"] for i, r in enumerate(index.rows) if i not in per_row]
    counts = tally(list(results.values()))
    why_unmatched = dict(sorted(Counter(u["reason"] for u in unmatched).items()))
    summary = {
        "mode": "import",
        "file": str(Path(file).resolve()),
        "file_sha256": file_sha256(Path(file)),
        "date": utc_now(),
        "verification": {"min_words": min_words, "max_words": max_words},
        **counts,
        "traces": len(traces),
        "unmatched_traces": why_unmatched,
        "rows_without_trace": len(rows_without),
    }
    listing = json.dumps({"traces": unmatched, "rows_without_trace": rows_without}, indent=1) + "\n"
    write_annotated(source, out, results, summary, extra_files={UNMATCHED_FILE: listing}, overwrite=overwrite)
    logger.info(
        "imported %d traces into %s: kept %d of %d rows; unmatched traces %s; rows without a trace %d",
        len(traces),
        out,
        counts["kept"],
        counts["rows"],
        why_unmatched,
        len(rows_without),
    )
    return ImportResult(
        out,
        counts,
        len(traces),
        len(traces) - len(unmatched),
        why_unmatched,
        len(rows_without),
        out / UNMATCHED_FILE,
    )
