"""`mpcc annotate`: ask a teacher for a reasoning trace per training row, verify it, keep it or not.

Tries run in rounds: round k asks again for every row whose k-1 answers all failed verification
(`tries` = 1 in guided mode by default; blind mode's rejection sampling wants several). Every answer is
saved to the work directory's progress log as it arrives (mpcc.annotation.store), so a re-run with
the same teacher and mode continues where the last one stopped and can raise `tries` to sample more.
A request that fails (after its retries) or brings an answer over `max_answer_chars` saves nothing, so
the next run asks again. A run whose requests all fail (endpoint down, wrong model name) raises
TeacherError: it writes no output made only of failures (only one from answers saved before, if any),
and its progress stays for the next run.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from mpcc.annotation.config import AnnotateConfig, check_sampling
from mpcc.annotation.output import RowResult, check_paths, row_result, tally, utc_now, write_annotated
from mpcc.annotation.prompts import PROMPT_VERSION, teacher_messages
from mpcc.annotation.store import PROGRESS_FILE, ProgressLog, check_run
from mpcc.annotation.teachers import TeacherError
from mpcc.annotation.verify import verify
from mpcc.data.render import load_dataset
from mpcc.errors import InputError
from mpcc.generation.endpoint import Request, one_line, too_long
from mpcc.records import read_build
from mpcc.seeds import mix_seed

logger = logging.getLogger(__name__)

LIGHT_COLUMNS = ("ann_id", "solution")


@dataclass
class AnnotateResult:
    path: Path
    counts: dict  # rows, kept, rejected by reason (per row)
    answers: dict  # every answer behind the rows: kept / rejection reason -> count
    new_answers: int  # answers received in this run (the rest came from the progress log)
    teacher_stats: dict
    work_dir: Path
    teacher_errors: dict = field(default_factory=dict)  # this run's failed requests: error -> count


def default_work_dir(out: Path) -> Path:
    return Path(out).parent / f"{Path(out).name}.annotate"


def request_seed(seed: int, ann_id: int, attempt: int) -> int:
    return mix_seed(seed, ann_id, attempt)


def annotate(
    dataset: str | Path,
    out: str | Path,
    teacher,
    config: AnnotateConfig,
    work_dir: str | Path | None = None,
    overwrite: bool = False,
) -> AnnotateResult:
    """Annotate the train build `dataset` with `teacher` (mpcc.annotation.teachers) into `out`."""
    source, out = Path(dataset), Path(out)
    work = _claim_work_dir(source, out, teacher, config, work_dir, overwrite)
    images = load_dataset(source)
    rows = _light_rows(images, source, config.limit)
    with ProgressLog(work / PROGRESS_FILE) as log:
        answers = _ask(images, rows, teacher, config, read_build(source).fill, log)
    results: dict[int, RowResult] = {
        row["ann_id"]: row_result(answers.by_row[i], unfinished=i in answers.failed_rows)
        for i, row in enumerate(rows)
    }
    counts = tally(list(results.values()))
    summary = _summary(answers, counts, teacher, config)
    subset = range(len(rows)) if config.limit is not None else None
    if not (answers.all_failed and not answers.saved):  # never an output made only of failures
        write_annotated(source, out, results, summary, rows=subset, overwrite=overwrite)
    if answers.all_failed:
        raise _all_failed(answers, teacher, out, work)
    if answers.failed_rows:
        logger.warning(
            "%d rows got no answer from the teacher (see the warnings above); re-run the same command with "
            "--overwrite to retry them (progress is kept in %s)",
            len(answers.failed_rows),
            work,
        )
    logger.info(
        "annotated %s: kept %d of %d rows, rejected %s", out, counts["kept"], len(rows), counts["rejected"]
    )
    return AnnotateResult(
        out, counts, summary["answers"], answers.new, dict(teacher.stats), work, summary["teacher_errors"]
    )


def _claim_work_dir(source: Path, out: Path, teacher, config: AnnotateConfig, work_dir, overwrite) -> Path:
    """Check everything that can fail before a teacher is asked (the source, `out`, the sampling), and
    take the work directory for this run: progress of another teacher, mode, dataset or prompt version
    is refused, so answers are never mixed."""
    check_paths(source, out, overwrite)
    check_sampling(config, teacher.decoding)
    work = Path(work_dir) if work_dir is not None else default_work_dir(out)
    check_run(
        work,
        {
            "dataset": str(source.resolve()),
            "teacher": teacher.name,
            "mode": config.mode,
            "prompt_version": PROMPT_VERSION,
        },
    )
    return work


def _light_rows(images, source: Path, limit: int | None) -> list[dict]:
    """The first `limit` rows' ann_id and solution, read without decoding or rendering an image."""
    n = len(images) if limit is None else min(limit, len(images))
    columns = images.select_columns(list(LIGHT_COLUMNS))[:n]
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    if len({r["ann_id"] for r in rows}) != len(rows):
        raise InputError(f"{source}: ann_id is not unique; a train build has one row per hidden object")
    return rows


@dataclass
class _Answers:
    """Every answer behind each row (by row index; saved ones first, each judged) and what failed in
    this run."""

    by_row: dict[int, list[dict]]
    failed_rows: set[int] = field(default_factory=set)  # rows whose request failed in this run
    failures: Counter = field(default_factory=Counter)  # error -> failed requests
    new: int = 0  # answers received in this run

    def todo(self, attempt: int) -> list[int]:
        """The rows that need answer number `attempt` now: each of their attempt - 1 answers failed
        verification, and no request for them failed in this run."""
        return [
            i
            for i, got in self.by_row.items()
            if i not in self.failed_rows and len(got) == attempt - 1 and not any(r["ok"] for r in got)
        ]

    @property
    def saved(self) -> int:
        return sum(len(records) for records in self.by_row.values())

    @property
    def asked(self) -> int:
        return self.new + self.failures.total()

    @property
    def all_failed(self) -> bool:
        """Requests were made and none brought an answer (endpoint down, wrong model name)."""
        return self.asked > 0 and self.new == 0


def _ask(images, rows: list[dict], teacher, config: AnnotateConfig, fill: str, log: ProgressLog) -> _Answers:
    """Round k asks again for every row whose k-1 answers all failed verification (`tries` rounds); each
    answer is judged and saved to `log` as it arrives. Saved answers are judged again, so a re-run with
    other length bounds decides by them."""
    answers = _Answers(
        {
            i: [{**r, **_judge(r["output"], row["solution"], config)} for r in log.attempts(row["ann_id"])]
            for i, row in enumerate(rows)
        }
    )
    for attempt in range(1, config.tries + 1):
        todo = answers.todo(attempt)
        if not todo:
            continue
        requests = _requests(images, todo, attempt, config, fill)
        replies = teacher.run(requests, max_chars=config.max_answer_chars)
        for reply in tqdm(replies, total=len(todo), desc=f"annotate {attempt}/{config.tries}", unit="row"):
            _take(reply, answers, rows, teacher, config, log)
    return answers


def _take(reply, answers: _Answers, rows: list[dict], teacher, config: AnnotateConfig, log: ProgressLog):
    """One reply: a failed request (or an answer over `max_answer_chars`) saves nothing, so the next run
    asks again; an answer is judged, saved to `log` and added to its row's."""
    i, attempt = reply.request.key
    error = (reply.error or "no answer") if reply.text is None else None
    if reply.text is not None and len(reply.text) > config.max_answer_chars:
        error = too_long(config.max_answer_chars)  # the teachers here check it themselves
    if error is not None:
        answers.failed_rows.add(i)
        answers.failures[error] += 1
        return
    record = {
        "ann_id": rows[i]["ann_id"],
        "attempt": attempt,
        **_judge(reply.text, rows[i]["solution"], config),
        "output": reply.text,
        "teacher": teacher.name,
        "mode": config.mode,
        "prompt_version": PROMPT_VERSION,
        "date": utc_now(),
    }
    log.append(record)
    answers.by_row[i].append(record)
    answers.new += 1


def _requests(images, todo: list[int], attempt: int, config: AnnotateConfig, fill: str):
    """The teacher's requests for rows `todo`: each whole row (image decoded or rendered) is read only
    when it is asked about."""
    for i in todo:
        row = images[i]
        seed = request_seed(config.seed, row["ann_id"], attempt)
        yield Request((i, attempt), teacher_messages(row, config.mode, fill), row["image"], seed)


def _judge(text: str, solution: str, config: AnnotateConfig) -> dict:
    verdict = verify(text, solution, config.min_words, config.max_words)
    return {"ok": verdict.ok, "reason": verdict.reason, "reasoning": verdict.reasoning}


def _summary(answers: _Answers, counts: dict, teacher, config: AnnotateConfig) -> dict:
    """What the build record keeps under `annotation`: the teacher's settings, the rows' counts, every
    answer's verdict and this run's failed requests."""
    verdicts = Counter(r["reason"] or "kept" for records in answers.by_row.values() for r in records)
    return {
        "teacher": teacher.name,
        "mode": config.mode,
        "prompt_version": PROMPT_VERSION,
        "config": asdict(config),
        "decoding": asdict(teacher.decoding),
        "date": utc_now(),
        **counts,
        "answers": dict(sorted(verdicts.items())),
        "teacher_errors": dict(answers.failures.most_common()),
    }


def _all_failed(answers: _Answers, teacher, out: Path, work: Path) -> TeacherError:
    """The error of a run whose requests all failed: the commonest error, what was written, and that
    the progress is kept for the next run."""
    error, count = answers.failures.most_common(1)[0]
    saved, asked = answers.saved, answers.asked  # all saved answers come from the progress log
    written = f"wrote {out} from the {saved} answers saved before" if saved else f"wrote nothing to {out}"
    again = "the same command with --overwrite" if out.exists() else "the same command"
    return TeacherError(
        f"all {asked} requests to the teacher {teacher.name} failed; commonest error ({count} of "
        f"{asked}): {one_line(error)}; {written}; progress is kept in {work}, so {again} asks again"
    )
