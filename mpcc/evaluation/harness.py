"""`mpcc eval`: generate for every eval row (batched), parse strictly, score, write the report.

Predictions are appended to `predictions.jsonl` as they come, so a stopped run resumes where it
stopped: rows (and samples) already there are not generated again. Sampling seeds depend on the
sample index and the batch, not on what ran before, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path

from tqdm.auto import tqdm

from mpcc.data import prompts
from mpcc.data.difficulty import LEVELS
from mpcc.data.render import load_dataset
from mpcc.errors import InputError
from mpcc.evaluation.blink import BLINK_KEYS, blink_rows
from mpcc.evaluation.config import IMAGE_DIAGNOSTICS, STEP_DIAGNOSTICS, EvalConfig
from mpcc.evaluation.grounding.conditions import Diagnostics
from mpcc.evaluation.grounding.runner import EVIDENCE_CHART, GROUNDING, RISK_CHART, run_step_diagnostics
from mpcc.evaluation.grounding.runner import charts as step_charts
from mpcc.evaluation.grounding.runner import compare as compare_grounding
from mpcc.evaluation.grounding.runner import markdown as step_markdown
from mpcc.evaluation.metrics import compute_metrics, markdown_report, table
from mpcc.evaluation.parsing import is_correct, parse_answer
from mpcc.evaluation.run_identity import check_claim, claim, run_identity
from mpcc.generation.decoding import Decoding
from mpcc.generation.generators import HFGenerator, VLLMGenerator
from mpcc.inputs import read_json, read_text
from mpcc.models import resolve_model_path
from mpcc.outputs.checks import check_output
from mpcc.outputs.locks import lock_output
from mpcc.outputs.marker import MARKER
from mpcc.outputs.staging import staged_output
from mpcc.outputs.writing import read_appended
from mpcc.records import BUILD_FILE, EVAL_RUN_FILE, read_build
from mpcc.reports.charts import accuracy_chart
from mpcc.rewards import levenshtein_reward
from mpcc.seeds import mix_seed

logger = logging.getLogger(__name__)

PREDICTIONS, METRICS, REPORT, CHART = "predictions.jsonl", "metrics.json", "report.md", "accuracy.png"
REPORT_HTML = "report.html"
COMPARE = "compare"  # the kind of output `mpcc eval compare` writes
RUN_OUTPUTS = (
    PREDICTIONS,
    GROUNDING,
    METRICS,
    REPORT,
    REPORT_HTML,
    CHART,
    EVIDENCE_CHART,
    RISK_CHART,
    EVAL_RUN_FILE,
)
ROW_FIELDS = (
    "item_id",
    "format",
    "difficulty",
    "in_distribution",
    "supercategory",
    "category",
    "solution",
    "answer",
    "options",
    "candidate",
    "candidate_kind",
)


def eval_rows(data: str | Path, config: EvalConfig) -> list[tuple[str, dict]]:
    """(prompt id, row) pairs to evaluate. `open` asks each item's open question (from its mc4 row).
    A saved dataset that is not an mpcc build is read as a BLINK-style benchmark."""
    if not (Path(data) / BUILD_FILE).is_file():
        from datasets import load_from_disk

        if config.diagnostics:
            raise InputError(f"{data}: diagnostics need an mpcc eval build (masks, context annotations)")
        try:
            dataset = load_from_disk(str(data))
        except OSError as e:
            raise InputError(f"neither an mpcc build nor a saved dataset: {e}") from e
        missing = [key for key in BLINK_KEYS if key not in dataset.column_names]
        if missing:
            raise InputError(
                f"{data}: neither an mpcc build (no {BUILD_FILE}) nor a BLINK-style dataset "
                f"(no {', '.join(missing)} column)"
            )
        rows = blink_rows(dataset)[: config.limit]
        return [(str(i), row) for i, row in enumerate(rows)]
    dataset = load_dataset(data)
    if "item_id" not in dataset.column_names:  # train builds have `format` too
        raise InputError(
            f"{data}: not an eval build (no `item_id` column); build one with `mpcc prepare eval`"
        )
    fill = read_build(data).fill
    formats, items = dataset["format"], dataset["item_id"]
    keep_items = list(dict.fromkeys(items))[: config.limit] if config.limit is not None else None
    wanted = set(keep_items) if keep_items is not None else None
    out = []
    for i, (fmt, item) in enumerate(zip(formats, items)):
        if wanted is not None and item not in wanted:
            continue
        if fmt in config.formats:
            out.append((f"{i}", dataset[i]))
        if fmt == "mc4" and "open" in config.formats:
            row = dict(dataset[i])
            row.update(
                format="open",
                answer=row["solution"],
                options=[],
                prompt=prompts.conversation(prompts.open_question(fill)),
            )
            out.append((f"{i}-open", row))
    if not out:
        raise InputError(f"{data}: no rows with formats {config.formats}")
    return out


def _done(path: Path) -> set[tuple[str, int]]:
    """Predictions already made (a line cut by a kill is dropped and made again)."""
    return {(r["prompt_id"], r["sample"]) for r in read_appended(path, ("prompt_id", "sample"))}


def _summarise_diagnostics(by_condition: dict[str, list[dict]]) -> dict:
    """Accuracy per level under each diagnostic, and its gap to the normal condition."""
    normal = compute_metrics(by_condition["normal"])
    out = {}
    for condition, records in by_condition.items():
        if condition == "normal":
            continue
        m = compute_metrics(records)
        levels = {lv: cell["accuracy"] for lv, cell in m["per_level"].items()}
        out[condition] = {
            "accuracy": m["accuracy"],
            "gap": m["accuracy"] - normal["accuracy"],
            "per_level": levels,
            "gap_per_level": {
                lv: acc - normal["per_level"][lv]["accuracy"]
                for lv, acc in levels.items()
                if lv in normal["per_level"]
            },
        }
    return out


def run_eval(
    model_name_or_path: str, data: str | Path, out: str | Path, config: EvalConfig, overwrite: bool = False
) -> dict:
    """Evaluate, writing predictions.jsonl, metrics.json, report.md, report.html and the charts under
    `out`; an unfinished run of the same settings resumes, another run's are refused unless `overwrite`."""
    out = Path(out)
    _lock = lock_output(out, inputs=(model_name_or_path, data))  # no other writer until this returns
    rows = eval_rows(data, config)
    identity = run_identity(model_name_or_path, resolve_model_path(model_name_or_path), data, config)
    check_claim(out, identity, overwrite)
    diagnostics = Diagnostics(data, k=config.context_k) if config.diagnostics else None
    predictions = out / PREDICTIONS
    done = set() if overwrite else _done(predictions)
    conditions = ("normal", *(d for d in config.diagnostics if d in IMAGE_DIAGNOSTICS))
    generator = None

    def get_generator():
        nonlocal generator
        if generator is None:
            path = resolve_model_path(model_name_or_path)  # cached once built (tiny:<arch>)
            if config.backend == "vllm":
                images = max(len(r.get("images") or [1]) for _, r in rows)
                generator = VLLMGenerator(path, max_images=images, prefix_caching=config.reuse_images)
            else:
                generator = HFGenerator(path, reuse_images=config.reuse_images)
        return generator

    todo = [
        (s, f"{pid}:{c}", row, c)
        for c in conditions
        for s in range(config.samples)
        for pid, row in rows
        if (f"{pid}:{c}", s) not in done
    ]
    if todo:
        get_generator()  # weights that do not load stop the run here, before anything is written
    if overwrite:
        for name in (*RUN_OUTPUTS, MARKER):
            (out / name).unlink(missing_ok=True)
    claim(out, identity)
    if todo:
        sampling = config.samples > 1 or config.decoding.do_sample
        decoding = Decoding(
            config.decoding.max_new_tokens, sampling, config.decoding.temperature, config.decoding.top_p
        )
        with (
            open(predictions, "a", encoding="utf-8") as f,
            tqdm(total=len(todo), desc="eval", unit="row") as bar,
        ):
            for start in range(0, len(todo), config.batch_size):
                batch = todo[start : start + config.batch_size]
                inputs = [row if c == "normal" else diagnostics.apply(row, c) for _, _, row, c in batch]
                seed = mix_seed(config.seed, batch[0][0], start)
                texts = generator(inputs, decoding, seed)
                for (sample, pid, row, condition), text in zip(batch, texts):
                    parsed, format_ok = parse_answer(text, row)
                    record = {
                        "prompt_id": pid,
                        "sample": sample,
                        "condition": condition,
                        "completion": text,
                        "parsed": parsed,
                        "format_ok": format_ok,
                        "correct": is_correct(parsed, row),
                        **{k: row.get(k) for k in ROW_FIELDS},
                    }
                    if row["format"] == "open":
                        record["levenshtein"] = levenshtein_reward([text], solution=[row["solution"]])[0]
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
                bar.update(len(batch))
    by_condition: dict[str, list[dict]] = {c: [] for c in conditions}
    for line in read_text(predictions).splitlines():
        record = json.loads(line)
        by_condition.setdefault(record.get("condition", "normal"), []).append(record)
    metrics = compute_metrics(by_condition["normal"])
    if len(conditions) > 1:
        metrics["diagnostics"] = _summarise_diagnostics({c: by_condition[c] for c in conditions})
    if set(config.diagnostics) & set(STEP_DIAGNOSTICS):
        answers = [r for r in by_condition["normal"] if r["sample"] == 0]
        by_pid = {f"{pid}:normal": row for pid, row in rows}
        metrics["grounding"] = run_step_diagnostics(
            lambda: _hf_model(get_generator(), model_name_or_path), get_generator, diagnostics, by_pid,
            answers, config, out,
        )  # fmt: skip
    (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    accuracy_chart({Path(str(model_name_or_path)).name: metrics}, out / CHART)
    report = markdown_report(metrics, f"mpcc eval: {model_name_or_path} on {data}")
    report += _diagnostics_markdown(metrics)
    if "grounding" in metrics:
        step_charts(metrics["grounding"], out)
        report += step_markdown(metrics["grounding"])
    report += f"\n![accuracy by level and format]({CHART})\n"
    (out / REPORT).write_text(report, encoding="utf-8")
    (out / REPORT_HTML).write_text(report_html(report, f"mpcc eval: {Path(str(model_name_or_path)).name}"))
    logger.info("eval of %s written to %s", model_name_or_path, out)
    return metrics


def _hf_model(generator, model_name_or_path: str):
    """(model, processor) for the measuring passes: the HF generator's own, else loaded once more."""
    if isinstance(generator, HFGenerator):
        return generator.model, generator.processor
    return HFGenerator(resolve_model_path(model_name_or_path)).model, generator.processor


def _diagnostics_markdown(metrics: dict) -> str:
    diagnostics = metrics.get("diagnostics")
    if not diagnostics:
        return ""
    lines = [
        "",
        "## Visual-reliance diagnostics (accuracy, gap to normal)",
        "",
        f"| condition | all | {' | '.join(LEVELS)} |",
        "|---" * (2 + len(LEVELS)) + "|",
    ]
    for condition, d in diagnostics.items():
        cells = [
            f"{d['per_level'][lv]:.3f} ({d['gap_per_level'][lv]:+.3f})" if lv in d["per_level"] else "-"
            for lv in LEVELS
        ]
        lines.append(f"| {condition} | {d['accuracy']:.3f} ({d['gap']:+.3f}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1em auto;max-width:1100px;padding:0 1em;color:#222}}
table{{border-collapse:collapse;display:block;overflow-x:auto;margin:.5em 0}}
th,td{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
th:first-child,td:first-child{{text-align:left}}
img{{max-width:100%;height:auto}} p{{overflow-wrap:anywhere}}
</style></head><body>
{body}</body></html>
"""


def report_html(markdown_text: str, title: str) -> str:
    """The markdown report as a page a browser shows (tables scroll sideways on a narrow window)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    return _PAGE.format(title=html.escape(title), body=body)


def read_metrics(run: Path) -> dict:
    """The metrics an `mpcc eval` run wrote, with an error naming the folder when it is not one."""
    try:
        return read_json(run / METRICS)
    except (OSError, ValueError) as e:
        raise InputError(f"{run}: not an `mpcc eval` output ({METRICS} unreadable: {e})") from e


def _accuracy(cell: dict | None) -> str:
    return f"{cell['accuracy']:.3f}" if cell else "–"


def compare_runs(runs: list[str | Path], out: str | Path, overwrite: bool = False) -> Path:
    """Several eval runs side by side: one chart and one markdown table of their metrics, written to `out`
    as every mpcc output (mpcc.outputs: whole or not at all; `overwrite` replaces only a comparison)."""
    out, runs = Path(out), [Path(r) for r in runs]
    check_output(out, overwrite, inputs=runs, kind=COMPARE)
    with staged_output(out, overwrite, kind=COMPARE) as staging:
        _write_comparison(runs, staging)
    return out / "compare.md"


def _write_comparison(runs: list[Path], out: Path) -> None:
    names = [r.name for r in runs]
    labels = names if len(set(names)) == len(names) else [str(r) for r in runs]  # never merge two runs
    metrics = {label: read_metrics(run) for label, run in zip(labels, runs)}
    accuracy_chart(metrics, out / CHART)
    formats = list(dict.fromkeys(f for m in metrics.values() for f in m["per_format"]))
    lines = ["## Accuracy by format", ""] + table(
        ("run", *formats, "all", "format compliance", "n"),
        [
            (
                name,
                *(_accuracy(m["per_format"].get(f)) for f in formats),
                f"{m['accuracy']:.3f}",
                f"{m['format_compliance']:.3f}",
                m["n"],
            )
            for name, m in metrics.items()
        ],
    )
    lines += ["## Accuracy by level and format", ""] + table(
        ("level", "run", *formats, "all"),
        [
            (
                level,
                name,
                *(_accuracy(m["per_level_format"].get(level, {}).get(f)) for f in formats),
                _accuracy(m["per_level"].get(level)),
            )
            for level in LEVELS
            for name, m in metrics.items()
        ],
    )
    lines.append(f"![accuracy by level and format]({CHART})")
    grounded = {name: m["grounding"] for name, m in metrics.items() if "grounding" in m}
    if grounded:
        lines += ["", *compare_grounding(grounded, out)]
    (out / "compare.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
