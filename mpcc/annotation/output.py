"""The annotated dataset: the source build plus the trace columns (mpcc.data.schema.ANNOTATED), written
to a temporary directory beside the output and renamed into place, so a failed or killed run leaves
no partial dataset. The build's record, statistics and skip report come along, so the result is still
a build (`mpcc.data.render.load_dataset`, `--stats`, lazy rendering all work on it).
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from mpcc.data.build import SKIPS_FILE, STATS_FILE
from mpcc.data.schema import ANNOTATED, TRAIN
from mpcc.errors import ConfigError, InputError
from mpcc.outputs.checks import check_output
from mpcc.outputs.staging import staged_output
from mpcc.records import read_build, write_build


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RowResult:
    """A row's trace, or why it has none, with the provenance of the answer that decided it."""

    reasoning: str | None = None
    verified: bool = False
    rejection: str | None = "no_trace"
    attempts: int = 0
    teacher: str | None = None
    mode: str | None = None
    prompt_version: str | None = None
    date: str | None = None
    output: str | None = None

    def columns(self) -> dict:
        return {
            "reasoning": self.reasoning,
            "reasoning_verified": self.verified,
            "reasoning_rejection": self.rejection,
            "reasoning_attempts": self.attempts,
            "reasoning_teacher": self.teacher,
            "reasoning_mode": self.mode,
            "reasoning_prompt_version": self.prompt_version,
            "reasoning_date": self.date,
            "teacher_output": self.output,
        }


def row_result(attempts: Sequence[Mapping], unfinished: bool = False) -> RowResult:
    """The first verified attempt wins (attempts counts up to it); otherwise the last attempt's failed
    check is the rejection, or `teacher_error` when the row still had tries left but got no answer."""
    if not attempts:
        return RowResult(rejection="teacher_error" if unfinished else "no_trace")
    for n, record in enumerate(attempts, 1):
        if record["ok"]:
            return _result(record, n, reasoning=record["reasoning"], verified=True, rejection=None)
    rejection = "teacher_error" if unfinished else attempts[-1]["reason"]
    return _result(attempts[-1], len(attempts), reasoning=None, verified=False, rejection=rejection)


def _result(record: Mapping, attempts: int, **decided) -> RowResult:
    return RowResult(
        attempts=attempts,
        teacher=record.get("teacher"),
        mode=record.get("mode"),
        prompt_version=record.get("prompt_version"),
        date=record.get("date"),
        output=record.get("output"),
        **decided,
    )


def tally(results: Sequence[RowResult]) -> dict:
    """Rows kept, and rows rejected per reason (the row's final reason)."""
    rejected = Counter(r.rejection for r in results if not r.verified)
    return {
        "rows": len(results),
        "kept": sum(r.verified for r in results),
        "rejected": dict(sorted(rejected.items())),
    }


def check_paths(source: Path, out: Path, overwrite: bool) -> None:
    """Fail before any work: the source must be a train build; `out` must be new (or --overwrite)."""
    if read_build(source).split != "train":
        raise InputError(f"{source}: not a train build (traces are for `mpcc prepare train` builds)")
    if Path(out).resolve() == Path(source).resolve():
        raise ConfigError(f"{out}: the output must not be the source dataset")
    check_output(out, overwrite, inputs=(source,))


def write_annotated(
    source: Path,
    out: Path,
    results: Mapping[int, RowResult],
    summary: dict,
    rows: Sequence[int] | None = None,
    extra_files: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """`source` (only `rows`, when given) with the trace columns from `results` (by ann_id; rows not
    there get no trace), `summary` recorded under "annotation" in the build record, and `extra_files`
    (name -> text) written beside the dataset; an existing `out` is replaced only with `overwrite`."""
    from datasets import Dataset, load_from_disk

    source, out = Path(source), Path(out)
    dataset = load_from_disk(str(source))  # as stored: lazy builds are not rendered
    if not isinstance(dataset, Dataset):
        raise InputError(f"{source}: holds a DatasetDict, not one mpcc build")
    if rows is not None:
        dataset = dataset.select(rows)
    per_row = [results.get(ann_id, RowResult()).columns() for ann_id in dataset["ann_id"]]
    features = {name: f for name, (f, _) in {"reasoning": TRAIN["reasoning"], **ANNOTATED}.items()}
    dataset = dataset.remove_columns([c for c in features if c in dataset.column_names])
    for name, feature in features.items():
        dataset = dataset.add_column(name, [r[name] for r in per_row], feature=feature)
    with staged_output(out, overwrite) as staged:
        dataset.save_to_disk(str(staged))
        write_build(staged, replace(read_build(source), num_rows=len(dataset), annotation=summary))
        for name in (STATS_FILE, SKIPS_FILE):
            if (source / name).is_file():
                shutil.copy2(source / name, staged / name)
        for name, text in (extra_files or {}).items():
            (staged / name).write_text(text, encoding="utf-8")
    return out
