"""`mpcc eval`: generate for every eval row (batched), parse strictly, score, write the report.

Predictions are appended to `predictions.jsonl` as they come, so a stopped run resumes where it
stopped: rows (and samples) already there are not generated again. Sampling seeds depend on the
sample index and the batch, not on what ran before, so a resumed run equals an uninterrupted one.
A served model (`openai:NAME`, mpcc.evaluation.served) answers the same rows over HTTP; a row whose
request failed is not written, so the report counts it as unanswered and the next run asks again.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from mpcc.data import prompts
from mpcc.data.render import load_dataset
from mpcc.errors import InputError, MpccError
from mpcc.evaluation.config import IMAGE_DIAGNOSTICS, STEP_DIAGNOSTICS, EvalConfig
from mpcc.evaluation.external import dataset_rows
from mpcc.evaluation.grounding.annotated import AnnotatedRegions
from mpcc.evaluation.grounding.conditions import Diagnostics
from mpcc.evaluation.grounding.entropy import served_entropy
from mpcc.evaluation.grounding.runner import GROUNDING, monitor_tasks, run_step_diagnostics
from mpcc.evaluation.metrics import compute_metrics
from mpcc.evaluation.parsing import is_correct, parse_answer
from mpcc.evaluation.run_identity import check_claim, claim, run_identity
from mpcc.evaluation.served import served_endpoint, served_generator
from mpcc.files import read_appended
from mpcc.generation.decoding import Decoding
from mpcc.generation.endpoint import EndpointConfig, one_line
from mpcc.generation.generators import APIGenerator, HFGenerator, VLLMGenerator
from mpcc.inputs import read_json, read_text
from mpcc.models import check_grounding, resolve_model_path
from mpcc.outputs.checks import check_output
from mpcc.outputs.locks import lock_output
from mpcc.outputs.marker import MARKER
from mpcc.outputs.staging import staged_output
from mpcc.records import BUILD_FILE, EVAL_RUN_FILE, read_build
from mpcc.reports.charts import ACCURACY_CHART
from mpcc.reports.compare import COMPARISON, write_comparison
from mpcc.reports.eval_report import REPORT, REPORT_HTML, write_eval_report
from mpcc.reports.grounding import EVIDENCE_CHART, RISK_CHART
from mpcc.rewards import levenshtein_reward
from mpcc.seeds import mix_seed

logger = logging.getLogger(__name__)

PREDICTIONS, METRICS = "predictions.jsonl", "metrics.json"
COMPARE = "compare"  # the kind of output `mpcc eval compare` writes
RUN_OUTPUTS = (
    PREDICTIONS,
    GROUNDING,
    METRICS,
    REPORT,
    REPORT_HTML,
    ACCURACY_CHART,
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
    Data that is not an mpcc build is another dataset (mpcc.evaluation.external)."""
    if not (Path(data) / BUILD_FILE).is_file():
        return dataset_rows(data, config)
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


def _conditions(data: str | Path, config: EvalConfig) -> Diagnostics | AnnotatedRegions | None:
    """What the diagnostics change and measure: a build's hidden object and context, or another dataset's
    annotated evidence regions (eval_rows has refused the diagnostics those cannot give)."""
    if not config.diagnostics:
        return None
    if (Path(data) / BUILD_FILE).is_file():
        return Diagnostics(data, k=config.context_k)
    return AnnotatedRegions()


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


def _load_generator(
    model_name_or_path: str, rows: list[tuple[str, dict]], config: EvalConfig, url: str | None,
    client: EndpointConfig,
):  # fmt: skip
    """The generator of the run's backend (a tiny:<arch> model is built once and cached), or of the
    served model at `url`."""
    if url is not None:
        return served_generator(model_name_or_path, url, [row for _, row in rows], client, config)
    path = resolve_model_path(model_name_or_path)
    if config.backend == "vllm":
        images = max(len(r.get("images") or [1]) for _, r in rows)
        return VLLMGenerator(path, max_images=images, prefix_caching=config.reuse_images)
    return HFGenerator(path, reuse_images=config.reuse_images)


def _todo(rows, conditions, samples: int, done: set[tuple[str, int]]) -> list[tuple[int, str, dict, str]]:
    """(sample, prompt id, row, condition) still to predict, in generation order: by condition, then
    sample, then row (a batch shares its sample's seed)."""
    return [
        (s, f"{pid}:{c}", row, c)
        for c in conditions
        for s in range(samples)
        for pid, row in rows
        if (f"{pid}:{c}", s) not in done
    ]


def _score(text: str, sample: int, pid: str, row: dict, condition: str) -> dict:
    """One prediction line: the completion, its strict parse and whether it is right, the row's fields."""
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
    return record


def _predict(generator, todo: list, diagnostics: Diagnostics | None, config: EvalConfig, path: Path) -> None:
    """Generate for `todo` in batches, appending each batch's scored predictions to `path` once made (a
    served model's failed rows are left out). A served model's answers carry their entropy when the
    entropy diagnostic runs (from the token log-probs its server returned)."""
    sampling = config.samples > 1 or config.decoding.do_sample
    d = config.decoding
    decoding = Decoding(d.max_new_tokens, sampling, d.temperature, d.top_p)
    entropy = isinstance(generator, APIGenerator) and "entropy" in config.diagnostics
    with open(path, "a", encoding="utf-8") as f, tqdm(total=len(todo), desc="eval", unit="row") as bar:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start : start + config.batch_size]
            inputs = [row if c == "normal" else diagnostics.apply(row, c) for _, _, row, c in batch]
            texts = generator(inputs, decoding, mix_seed(config.seed, batch[0][0], start))
            for i, ((sample, pid, row, condition), text) in enumerate(zip(batch, texts)):
                if text is None:
                    continue
                record = _score(text, sample, pid, row, condition)
                if entropy:
                    record["entropy"] = served_entropy(text, generator.logprobs[i])
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(batch))


def _by_condition(path: Path, conditions: tuple[str, ...]) -> dict[str, list[dict]]:
    """Every prediction made (this run's and a resumed one's), by image condition."""
    by_condition: dict[str, list[dict]] = {c: [] for c in conditions}
    for line in read_text(path).splitlines():
        record = json.loads(line)
        by_condition.setdefault(record.get("condition", "normal"), []).append(record)
    return by_condition


def read_predictions(run: Path) -> dict[str, list[dict]]:
    """An eval run's scored answers (first sample) by image condition (normal, blind, ...)."""
    by_condition = _by_condition(Path(run) / PREDICTIONS, ("normal",))
    return {c: [r for r in rs if r["sample"] == 0] for c, rs in by_condition.items()}


def _summarise(by_condition: dict[str, list[dict]], conditions: tuple[str, ...]) -> dict:
    """metrics.json without its grounding section: the normal condition's metrics, and the diagnostics'
    accuracy gaps when the run had image conditions."""
    metrics = compute_metrics(by_condition["normal"])
    if len(conditions) > 1:
        metrics["diagnostics"] = _summarise_diagnostics({c: by_condition[c] for c in conditions})
    return metrics


def _unanswered(generator, by_condition: dict[str, list[dict]], expected: int, url: str | None) -> dict:
    """metrics' `unanswered` of a served model's run: rows with no prediction yet and this run's request
    errors. A run with no answer on the normal image is an error: nothing to score (the folder keeps its
    record and predictions: the same command resumes)."""
    errors = generator().errors if generator.cache_info().currsize else Counter()
    if not by_condition["normal"]:
        commonest = f"; commonest error: {one_line(errors.most_common(1)[0][0])}" if errors else ""
        raise MpccError(f"no row was answered by {url}{commonest}; the same command asks again")
    return {"rows": expected - sum(map(len, by_condition.values())), "errors": dict(errors)}


def run_eval(
    model_name_or_path: str,
    data: str | Path,
    out: str | Path,
    config: EvalConfig,
    overwrite: bool = False,
    endpoint: str | None = None,
    client: EndpointConfig | None = None,
) -> dict:
    """Evaluate, writing predictions.jsonl, metrics.json, report.md, report.html and the charts under
    `out`; an unfinished run of the same settings resumes, another run's are refused unless `overwrite`.
    A model `openai:NAME` is served at `endpoint` and asked as `client` says (mpcc.evaluation.served)."""
    out = Path(out)
    url = served_endpoint(model_name_or_path, endpoint, config)
    _lock = lock_output(out, inputs=(model_name_or_path, data))  # no other writer until this returns
    rows = eval_rows(data, config)
    if "evidence" in config.diagnostics:
        monitor_tasks(dict(rows), config.monitor_task)  # a wrong --monitor-task stops before generating
    model_path = None if url else resolve_model_path(model_name_or_path)
    if "evidence" in config.diagnostics and model_path is not None:
        check_grounding(model_path)  # a family that cannot map its tokens stops here too
    identity = run_identity(model_name_or_path, model_path, data, config, endpoint=url)
    check_claim(out, identity, overwrite)
    diagnostics = _conditions(data, config)
    conditions = ("normal", *(d for d in config.diagnostics if d in IMAGE_DIAGNOSTICS))
    generator = functools.cache(
        functools.partial(_load_generator, model_name_or_path, rows, config, url, client or EndpointConfig())
    )
    todo = _todo(rows, conditions, config.samples, set() if overwrite else _done(out / PREDICTIONS))
    if todo:
        generator()  # weights that do not load stop the run here, before anything is written
    if overwrite:
        for name in (*RUN_OUTPUTS, MARKER):
            (out / name).unlink(missing_ok=True)
    claim(out, identity)
    if todo:
        _predict(generator(), todo, diagnostics, config, out / PREDICTIONS)
    by_condition = _by_condition(out / PREDICTIONS, conditions)
    expected = len(rows) * config.samples * len(conditions)
    unanswered = _unanswered(generator, by_condition, expected, url) if url is not None else None
    metrics = _summarise(by_condition, conditions)
    if unanswered is not None:
        metrics["unanswered"] = unanswered
    if set(config.diagnostics) & set(STEP_DIAGNOSTICS):
        answers = [r for r in by_condition["normal"] if r["sample"] == 0]
        by_pid = {f"{pid}:normal": row for pid, row in rows}
        metrics["grounding"] = run_step_diagnostics(
            lambda: _hf_model(generator(), model_name_or_path), generator, diagnostics, by_pid, answers,
            config, out,
        )  # fmt: skip
    (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    name = Path(str(model_name_or_path)).name
    write_eval_report(metrics, out, f"mpcc eval: {model_name_or_path} on {data}", name)
    logger.info("eval of %s written to %s", model_name_or_path, out)
    return metrics


def _hf_model(generator, model_name_or_path: str):
    """(model, processor) for the measuring passes: the HF generator's own, else loaded once more; a
    served model has none (None, None): the measures that need them were refused or are left out."""
    if isinstance(generator, APIGenerator):
        return None, None
    if isinstance(generator, HFGenerator):
        return generator.model, generator.processor
    return HFGenerator(resolve_model_path(model_name_or_path)).model, generator.processor


def read_metrics(run: Path) -> dict:
    """The metrics an `mpcc eval` run wrote, with an error naming the folder when it is not one."""
    try:
        return read_json(run / METRICS)
    except (OSError, ValueError) as e:
        raise InputError(f"{run}: not an `mpcc eval` output ({METRICS} unreadable: {e})") from e


def compared_metrics(runs: list[Path]) -> dict[str, dict]:
    """Each run's metrics by label: its folder name, or its whole path when two names are the same (two
    runs are never merged into one row)."""
    names = [r.name for r in runs]
    labels = names if len(set(names)) == len(names) else [str(r) for r in runs]
    return {label: read_metrics(run) for label, run in zip(labels, runs)}


def compare_runs(runs: list[str | Path], out: str | Path, overwrite: bool = False) -> Path:
    """Several eval runs side by side: one chart and one markdown table of their metrics, written to `out`
    as every mpcc output (mpcc.outputs: whole or not at all; `overwrite` replaces only a comparison)."""
    out, runs = Path(out), [Path(r) for r in runs]
    check_output(out, overwrite, inputs=runs, kind=COMPARE)
    with staged_output(out, overwrite, kind=COMPARE) as staging:
        write_comparison(compared_metrics(runs), staging)
    return out / COMPARISON
