"""`--diagnostics crm,evidence,entropy`: the step-level measures of `mpcc.evaluation.grounding.evidence`
(evidence attention, entropy; then `monitor`: AURC, AUROC, the entropy x vision model per task, the vision
vetoes), `mpcc.evaluation.grounding.crm` and `mpcc.evaluation.grounding.entropy` over an eval run's greedy
answers. A served model has no weights here (model None): its answers bring their entropy, and CRM
runs its regenerated contrast only.

Evidence (and entropy) is measured on every evaluated row's answer, `--batch-size` answers per
teacher-forced forward (with both, an answer's entropy record comes from its evidence pass: one forward,
not two); CRM (one batched forward per answer, one regeneration per region set and per its
control, several answers' regenerations in one generate call of `--batch-size` rows) on one answer per
item: its open question when evaluated, else its first row.
Records are appended to `grounding.jsonl` as they come, so a stopped run resumes where it stopped. The
section's tables and charts are mpcc.reports.grounding's.
"""

from __future__ import annotations

import json
from itertools import chain
from pathlib import Path

from tqdm.auto import tqdm

from mpcc.errors import ConfigError
from mpcc.evaluation.config import EvalConfig
from mpcc.evaluation.grounding.attention import resolve_layers
from mpcc.evaluation.grounding.crm import Ablation, ablate, crm_record, summarise_crm
from mpcc.evaluation.grounding.entropy import entropy_of_evidence, entropy_records, summarise_entropy
from mpcc.evaluation.grounding.evidence import evidence_records, summarise_evidence
from mpcc.evaluation.grounding.monitor import ALL, uncertainty_report
from mpcc.files import read_appended
from mpcc.generation.decoding import Decoding

GROUNDING = "grounding.jsonl"
KEPT = ("prompt_id", "item_id", "format", "difficulty", "correct")


def _read(path: Path) -> dict[tuple[str, str], dict]:
    """Records already made, by (kind, prompt id); a line cut by a kill is dropped and made again."""
    return {(r["kind"], r["prompt_id"]): r for r in read_appended(path, ("kind", "prompt_id"))}


def _crm_answers(answers: list[dict]) -> list[dict]:
    """One answer per item: its open question when there is one, else its first row."""
    chosen: dict[str, dict] = {}
    for answer in answers:
        current = chosen.get(answer["item_id"])
        if current is None or (answer["format"] == "open" and current["format"] != "open"):
            chosen[answer["item_id"]] = answer
    return list(chosen.values())


def monitor_tasks(rows: dict[str, dict], key: str) -> dict[str, str]:
    """Each eval row's task for the uncertainty monitor (by prompt id): its column `key` (format,
    difficulty, category, ...). The harness calls it before generating, so a wrong name costs nothing."""
    for pid, row in rows.items():
        if key not in row:
            raise ConfigError(f"--monitor-task {key!r}: eval row {pid} has no such column ({sorted(row)})")
        if str(row[key]) == ALL:
            raise ConfigError(
                f"--monitor-task {key!r}: eval row {pid} has task {ALL!r}, the pooled answers' name"
            )
    return {pid: str(row[key]) for pid, row in rows.items()}


def _crm_batches(answers: list[dict], rows: dict[str, dict], diagnostics, config: EvalConfig):
    """[(answer, its ablation)] lists whose ablated rows fit one generate call of `--batch-size` rows
    (an answer with more rows than that goes alone), so regenerations are batched across items."""
    batch: list[tuple[dict, Ablation]] = []
    for answer in answers:
        ablation = ablate(diagnostics, rows[answer["prompt_id"]], config.crm_regions, config.crm_fill)
        if batch and sum(len(a.rows) for _, a in batch) + len(ablation.rows) > config.batch_size:
            yield batch
            batch = []
        batch.append((answer, ablation))
    if batch:
        yield batch


def _evidence_records(answers, rows, model, processor, diagnostics, config: EvalConfig, layers, entropy):
    """Measured `--batch-size` answers per forward: one forward per answer would cost more than the
    answers' generation on a CPU. The answers whose prompt id is in `entropy` get their entropy record
    from the same pass (its logits are the entropy pass's)."""
    for start in range(0, len(answers), config.batch_size):
        batch = answers[start : start + config.batch_size]
        measured = [
            (rows[a["prompt_id"]], a["completion"], diagnostics.regions(rows[a["prompt_id"]])) for a in batch
        ]
        for answer, record in zip(batch, evidence_records(model, processor, measured, layers)):
            yield "evidence", answer, record
            if answer["prompt_id"] in entropy:
                yield "entropy", answer, entropy_of_evidence(record)


def _crm_records(answers, rows, model, processor, diagnostics, config: EvalConfig, generator):
    greedy = Decoding(max_new_tokens=config.decoding.max_new_tokens)
    for batch in _crm_batches(answers, rows, diagnostics, config):
        regenerated = iter(generator([r for _, a in batch for r in a.rows], greedy, config.seed))
        for answer, ablation in batch:
            mine = [next(regenerated) for _ in ablation.rows]
            if None in mine:  # a served model's request failed: no record, the next run asks again
                continue
            row = rows[answer["prompt_id"]]
            yield (
                "crm",
                answer,
                crm_record(model, processor, diagnostics, row, answer["completion"], ablation, mine),
            )


def _entropy_records(answers, rows, model, processor, config: EvalConfig):
    if model is None:  # served: the entropy its server's log-probs gave
        for answer in answers:
            yield "entropy", answer, answer.get("entropy") or {"entropy_full": None}
        return
    for start in range(0, len(answers), config.batch_size):
        batch = answers[start : start + config.batch_size]
        pairs = [(rows[a["prompt_id"]], a["completion"]) for a in batch]
        for answer, record in zip(batch, entropy_records(model, processor, pairs)):
            yield "entropy", answer, record


def run_step_diagnostics(
    model_source, generator_source, diagnostics, rows: dict[str, dict], answers: list[dict],
    config: EvalConfig, out: Path,
) -> dict:  # fmt: skip
    """The `grounding` section of metrics.json. `answers` are the normal-condition greedy predictions,
    `rows` the eval rows by prompt id; `model_source()` gives (model, processor) for the measuring
    passes and `generator_source()` the generator that regenerates on ablated images."""
    path = out / GROUNDING
    done = _read(path)
    answers = [a for a in answers if a["completion"]]

    def todo(kind: str, measured: list[dict]) -> list[dict]:
        wanted = kind in config.diagnostics
        return [a for a in measured if wanted and (kind, a["prompt_id"]) not in done]

    evidence, crm, entropy = (
        todo("evidence", answers),
        todo("crm", _crm_answers(answers)),
        todo("entropy", answers),
    )
    if evidence or crm or entropy:
        model, processor = model_source()
        generator = generator_source()
        layers = resolve_layers(model, config.attention_layers) if evidence else None
        measuring = {a["prompt_id"] for a in evidence} if model is not None else set()
        with_evidence = {a["prompt_id"] for a in entropy} & measuring
        measured = chain(
            _evidence_records(evidence, rows, model, processor, diagnostics, config, layers, with_evidence),
            _crm_records(crm, rows, model, processor, diagnostics, config, generator),
            _entropy_records(
                [a for a in entropy if a["prompt_id"] not in with_evidence], rows, model, processor, config
            ),
        )
        with open(path, "a", encoding="utf-8") as f:
            for kind, answer, record in tqdm(
                measured, total=len(evidence) + len(crm) + len(entropy), desc="step diagnostics"
            ):
                record = {"kind": kind, **{k: answer[k] for k in KEPT}, **record}
                done[(kind, answer["prompt_id"])] = record
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
    wanted = {a["prompt_id"] for a in answers}
    records = {"evidence": [], "crm": [], "entropy": []}
    for (kind, pid), record in done.items():
        if pid in wanted:
            records[kind].append(record)
    section = {}
    if "evidence" in config.diagnostics:
        section["evidence"] = summarise_evidence(records["evidence"])
        tasks = monitor_tasks(rows, config.monitor_task)
        section["uncertainty"] = uncertainty_report(
            [{**r, "task": tasks[r["prompt_id"]]} for r in records["evidence"]]
        )
        section["uncertainty"]["task_key"] = config.monitor_task
    if "crm" in config.diagnostics:
        section["crm"] = summarise_crm(records["crm"])
    if "entropy" in config.diagnostics:
        section["entropy"] = summarise_entropy(records["entropy"])
    return section
