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
from mpcc.annotation.teachers import Request, TeacherError, one_line, too_long
from mpcc.annotation.verify import verify
from mpcc.data.render import load_dataset
from mpcc.errors import InputError
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
    images = load_dataset(source)
    n = len(images) if config.limit is None else min(config.limit, len(images))
    rows = images.select_columns(list(LIGHT_COLUMNS))[:n]
    rows = [dict(zip(rows, values)) for values in zip(*rows.values())]
    if len({r["ann_id"] for r in rows}) != len(rows):
        raise InputError(f"{source}: ann_id is not unique; a train build has one row per hidden object")
    fill = read_build(source).fill

    def requests(todo: list[int], attempt: int):
        for i in todo:
            row = images[i]  # the whole row (image decoded or rendered) only when it is asked about
            seed = request_seed(config.seed, row["ann_id"], attempt)
            yield Request((i, attempt), teacher_messages(row, config.mode, fill), row["image"], seed)

    def judge(text: str, i: int) -> dict:
        verdict = verify(text, rows[i]["solution"], config.min_words, config.max_words)
        return {"ok": verdict.ok, "reason": verdict.reason, "reasoning": verdict.reasoning}

    errors: set[int] = set()  # rows whose request failed in this run
    failures: Counter = Counter()  # error -> failed requests
    new = 0
    with ProgressLog(work / PROGRESS_FILE) as log:
        # Saved answers are judged again, so a re-run with other length bounds decides by them.
        answers = {
            i: [{**r, **judge(r["output"], i)} for r in log.attempts(row["ann_id"])]
            for i, row in enumerate(rows)
        }
        for attempt in range(1, config.tries + 1):
            todo = [i for i in range(n) if i not in errors and _open_at(answers[i], attempt)]
            if not todo:
                continue
            replies = teacher.run(requests(todo, attempt), max_chars=config.max_answer_chars)
            for reply in tqdm(
                replies, total=len(todo), desc=f"annotate {attempt}/{config.tries}", unit="row"
            ):
                i = reply.request.key[0]
                error = (reply.error or "no answer") if reply.text is None else None
                if reply.text is not None and len(reply.text) > config.max_answer_chars:
                    error = too_long(config.max_answer_chars)  # the teachers here check it themselves
                if error is not None:
                    errors.add(i)
                    failures[error] += 1
                    continue
                record = {
                    "ann_id": rows[i]["ann_id"],
                    "attempt": attempt,
                    **judge(reply.text, i),
                    "output": reply.text,
                    "teacher": teacher.name,
                    "mode": config.mode,
                    "prompt_version": PROMPT_VERSION,
                    "date": utc_now(),
                }
                log.append(record)
                answers[i].append(record)
                new += 1
    results: dict[int, RowResult] = {
        row["ann_id"]: row_result(answers[i], unfinished=i in errors) for i, row in enumerate(rows)
    }
    verdicts = Counter(r["reason"] or "kept" for records in answers.values() for r in records)
    counts = tally(list(results.values()))
    summary = {
        "teacher": teacher.name,
        "mode": config.mode,
        "prompt_version": PROMPT_VERSION,
        "config": asdict(config),
        "decoding": asdict(teacher.decoding),
        "date": utc_now(),
        **counts,
        "answers": dict(sorted(verdicts.items())),
        "teacher_errors": dict(failures.most_common()),
    }
    asked = new + failures.total()
    all_failed = asked > 0 and new == 0
    saved = sum(len(records) for records in answers.values())  # all from the progress log if all_failed
    subset = range(n) if config.limit is not None else None
    if not (all_failed and not saved):  # never an output made only of failures
        write_annotated(source, out, results, summary, rows=subset, overwrite=overwrite)
    if all_failed:
        error, count = failures.most_common(1)[0]
        written = f"wrote {out} from the {saved} answers saved before" if saved else f"wrote nothing to {out}"
        again = "the same command with --overwrite" if out.exists() else "the same command"
        raise TeacherError(
            f"all {asked} requests to the teacher {teacher.name} failed; commonest error ({count} of "
            f"{asked}): {one_line(error)}; {written}; progress is kept in {work}, so {again} asks again"
        )
    if errors:
        logger.warning(
            "%d rows got no answer from the teacher (see the warnings above); re-run the same command with "
            "--overwrite to retry them (progress is kept in %s)",
            len(errors),
            work,
        )
    logger.info("annotated %s: kept %d of %d rows, rejected %s", out, counts["kept"], n, counts["rejected"])
    return AnnotateResult(
        out, counts, summary["answers"], new, dict(teacher.stats), work, summary["teacher_errors"]
    )


def _open_at(attempts: list[dict], attempt: int) -> bool:
    """Whether a row with these saved answers needs answer number `attempt` now."""
    return len(attempts) == attempt - 1 and not any(r["ok"] for r in attempts)
