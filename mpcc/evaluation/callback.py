"""Evaluate on a fixed subset of an eval build every N training steps, logged like other metrics
(`mpcc_eval/accuracy`, per level, format compliance)."""

from __future__ import annotations

from transformers import TrainerCallback
from trl.models import unwrap_model_for_generation

from mpcc.evaluation.config import Decoding, EvalConfig
from mpcc.evaluation.generation import generate
from mpcc.evaluation.harness import eval_rows
from mpcc.evaluation.metrics import compute_metrics
from mpcc.evaluation.parsing import is_correct, parse_answer


class EvalCallback(TrainerCallback):
    """Greedy generation on the first `items` items (all formats of each), every `every` steps."""

    def __init__(
        self, trainer, data, every: int, items: int = 16, batch_size: int = 16, max_new_tokens: int = 64
    ):
        self.trainer, self.every, self.batch_size = trainer, every, batch_size
        self.rows = [row for _, row in eval_rows(data, EvalConfig(limit=items))]
        self.decoding = Decoding(max_new_tokens=max_new_tokens)

    def on_step_end(self, args, state, control, **kwargs):
        if self.every > 0 and state.global_step % self.every == 0:
            self.trainer.log(self.evaluate())
        return control

    def evaluate(self) -> dict[str, float]:
        trainer = self.trainer
        was_training = trainer.model.training
        records = []
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
            model.eval()
            for start in range(0, len(self.rows), self.batch_size):
                batch = self.rows[start : start + self.batch_size]
                for row, text in zip(batch, generate(model, trainer.processing_class, batch, self.decoding)):
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
        trainer.model.train(was_training)
        m = compute_metrics(records)
        logs = {"mpcc_eval/accuracy": m["accuracy"], "mpcc_eval/format_compliance": m["format_compliance"]}
        logs.update({f"mpcc_eval/accuracy_{lv}": cell["accuracy"] for lv, cell in m["per_level"].items()})
        return logs
