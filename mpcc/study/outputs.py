"""Where the study's runs live, and reading back the finished ones: a model per (arm, seed) under
`runs/`, its eval under `evals/` (the untrained model's one eval under `evals/zero_shot/start`)."""

from __future__ import annotations

from pathlib import Path

from mpcc.evaluation.harness import METRICS, read_predictions
from mpcc.study.arms import Arm
from mpcc.study.config import StudyConfig
from mpcc.training.curves import STATE_FILE, log_history

TIMINGS = "timings.json"
REPORT_DIR = "report"
ZERO_SHOT_SEED = -1  # the untrained model's one eval, shared by every seed


def model_dir(out: Path, arm: str, seed: int) -> Path:
    return out / "runs" / arm / f"seed{seed}"


def eval_dir(out: Path, arm: str, seed: int) -> Path:
    return out / "evals" / arm / ("start" if seed == ZERO_SHOT_SEED else f"seed{seed}")


def collect(config: StudyConfig, table: dict[str, Arm]) -> tuple[dict, dict]:
    """({arm: {seed: scored answers}}, {arm: {seed: GRPO log history}}) of the finished runs."""
    answers, histories = {}, {}
    for name, arm in table.items():
        seeds = config.seed_list if arm.seeded else [ZERO_SHOT_SEED]
        if arm.evaluated:
            found = {s: eval_dir(config.out, name, s) for s in seeds}
            answers[name] = {
                s: read_predictions(d)["normal"] for s, d in found.items() if (d / METRICS).is_file()
            }
        if arm.recipe in ("grpo", "grpo_prior"):
            found = {s: model_dir(config.out, name, s) for s in seeds}
            histories[name] = {s: log_history(d) for s, d in found.items() if (d / STATE_FILE).is_file()}
    return answers, histories
