"""`mpcc export-mpcc-eval BUILD --format lmms-eval --out DIR`: MPCC-Eval as an lmms-eval task, so that
`lmms-eval --tasks mpcc_eval --include_path DIR --model ...` runs it in the harness users already have.

The folder: `mpcc_eval.yaml` (the task: greedy decoding, the metrics below), `utils.py` (a copy of
mpcc.evaluation.lmms_task_utils: the prompts, mpcc's strict parsing, the aggregations; it imports mpcc's
parsing, see there) and `data/` (a DatasetDict saved with `save_to_disk`, split `test`: the rows
`mpcc eval` asks, in its order, with their rendered images). Metrics: accuracy, format compliance, and
accuracy per level (easy / middle / hard), per format (mc4 / mc7 / yesno) and in / out of distribution
(held-out categories). The YAML names the data by its absolute path: a moved folder needs its
`dataset_path` edited.
"""

from __future__ import annotations

from pathlib import Path

from mpcc.data.answer_options import OPTION_FORMATS
from mpcc.evaluation import lmms_task_utils
from mpcc.evaluation.config import EvalConfig
from mpcc.evaluation.harness import eval_rows
from mpcc.outputs.checks import check_output
from mpcc.outputs.staging import staged_output

TASK, KIND = "mpcc_eval", "lmms-eval task"
DATA, SPLIT = "data", "test"
COLUMNS = ("item_id", "format", "difficulty", "in_distribution", "category", "prompt", "answer", "options")
COLUMNS += ("solution",)


def task_yaml(data: Path, max_new_tokens: int) -> str:
    """The task's YAML: each metric aggregated by its `mpcc_<metric>` function of utils.py."""
    metrics = "".join(
        f"  - metric: {m}\n    aggregation: !function utils.mpcc_{m}\n    higher_is_better: true\n"
        for m in lmms_task_utils.METRICS
    )
    return (
        f"task: {TASK}\n"
        f"dataset_path: {data}\n"
        "dataset_kwargs:\n  load_from_disk: true\n"
        f"test_split: {SPLIT}\n"
        "output_type: generate_until\n"
        "doc_to_visual: !function utils.mpcc_doc_to_visual\n"
        "doc_to_text: !function utils.mpcc_doc_to_text\n"
        "doc_to_messages: !function utils.mpcc_doc_to_messages\n"
        "doc_to_target: answer\n"
        "generation_kwargs:\n"
        f"  max_new_tokens: {max_new_tokens}\n  temperature: 0\n  do_sample: false\n"
        "process_results: !function utils.mpcc_process_results\n"
        f"metric_list:\n{metrics}"
        "metadata:\n  version: 1\n"
    )


def export_task(
    build: str | Path, out: str | Path, limit: int | None = None, max_new_tokens: int = 256,
    overwrite: bool = False,
) -> int:  # fmt: skip
    """Write the task folder for the first `limit` items (all: None) of an eval build; returns its rows."""
    from datasets import Dataset, DatasetDict

    out = Path(out).resolve()
    check_output(out, overwrite, inputs=(build,), kind=KIND)
    rows = [row for _, row in eval_rows(build, EvalConfig(formats=OPTION_FORMATS, limit=limit))]
    records = [{"image": row["image"].convert("RGB"), **{k: row[k] for k in COLUMNS}} for row in rows]
    with staged_output(out, overwrite, kind=KIND) as staging:
        DatasetDict({SPLIT: Dataset.from_list(records)}).save_to_disk(str(staging / DATA))
        (staging / "utils.py").write_text(Path(lmms_task_utils.__file__).read_text(encoding="utf-8"))
        (staging / f"{TASK}.yaml").write_text(task_yaml(out / DATA, max_new_tokens), encoding="utf-8")
    return len(records)
