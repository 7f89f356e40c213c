"""Evaluate on a fixed subset of an eval build every N training steps, logged like other metrics
(`mpcc_eval/accuracy`, per level, format compliance) and, with `grounding`, the evidence measures of
`mpcc.evaluation.grounding.evidence` on the same answers (`grounding/*`): whether training makes the
model look at the context while it reasons."""

from __future__ import annotations

from transformers import TrainerCallback
from trl.models import unwrap_model_for_generation

from mpcc.evaluation.config import EvalConfig
from mpcc.evaluation.grounding.attention import resolve_layers
from mpcc.evaluation.grounding.conditions import Diagnostics
from mpcc.evaluation.grounding.evidence import evidence_records, summarise_evidence
from mpcc.evaluation.harness import eval_rows
from mpcc.evaluation.metrics import compute_metrics
from mpcc.evaluation.parsing import is_correct, parse_answer
from mpcc.generation.decoding import Decoding
from mpcc.generation.generators import generate

# evidence measures logged as grounding/<key> (value of an estimate; its interval needs more answers)
GROUNDING_LOGS = (
    "evidence_share", "evidence_lift", "evidence_overlap", "collapse_ratio", "collapse_ratio_raw",
    "evidence_mass_raw", "image_mass_raw", "entropy_full",
)  # fmt: skip


class EvalCallback(TrainerCallback):
    """Greedy generation on the first `items` items (all formats of each), every `every` steps."""

    def __init__(
        self,
        trainer,
        data,
        every: int,
        items: int = 16,
        batch_size: int = 16,
        max_new_tokens: int = 64,
        grounding: bool = False,
    ):
        self.trainer, self.every, self.batch_size = trainer, every, batch_size
        self.rows = [row for _, row in eval_rows(data, EvalConfig(limit=items))]
        self.decoding = Decoding(max_new_tokens=max_new_tokens)
        self.regions = {}
        if grounding:  # evidence regions once per item, not per evaluation
            diagnostics = Diagnostics(data)
            for row in self.rows:
                if row["item_id"] not in self.regions:
                    self.regions[row["item_id"]] = diagnostics.regions(row)

    def on_step_end(self, args, state, control, **kwargs):
        if self.every > 0 and state.global_step % self.every == 0:
            self.trainer.log(self.evaluate())
        return control

    def evaluate(self) -> dict[str, float]:
        trainer = self.trainer
        processor = trainer.processing_class
        was_training = trainer.model.training
        records, measured = [], []
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
            model.eval()
            for start in range(0, len(self.rows), self.batch_size):
                batch = self.rows[start : start + self.batch_size]
                texts = generate(model, processor, batch, self.decoding)
                for row, text in zip(batch, texts):
                    parsed, format_ok = parse_answer(text, row)
                    records.append(
                        {
                            **row,
                            "image": None,
                            "parsed": parsed,
                            "format_ok": format_ok,
                            "correct": is_correct(parsed, row),
                        }
                    )
                answered = [
                    (r, t, self.regions[r["item_id"]]) for r, t in zip(batch, texts) if t and self.regions
                ]
                if answered:  # the batch's answers in one measuring forward
                    evidence = evidence_records(model, processor, answered, resolve_layers(model, None))
                    for (row, _, _), record in zip(answered, evidence):
                        measured.append({**record, **{k: row[k] for k in ("item_id", "difficulty")}})
        trainer.model.train(was_training)
        m = compute_metrics(records)
        logs = {"mpcc_eval/accuracy": m["accuracy"], "mpcc_eval/format_compliance": m["format_compliance"]}
        logs.update({f"mpcc_eval/accuracy_{lv}": cell["accuracy"] for lv, cell in m["per_level"].items()})
        if measured:
            cell = summarise_evidence(measured)["all"]
            values = {k: cell[k]["value"] if isinstance(cell[k], dict) else cell[k] for k in GROUNDING_LOGS}
            logs.update({f"grounding/{k}": v for k, v in values.items() if v is not None})
        return logs
