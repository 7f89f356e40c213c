"""Learning curves of GRPO runs, read from the `trainer_state.json` that `mpcc.train` saves beside the model.

With prior sampling TRL's `reward` also averages the injected traces, which score high by construction;
what shows whether the policy itself learns is the reward of the samples it generated
(`prior/generated_reward`). For plain GRPO every sample is generated, so that is `reward`.
"""

from __future__ import annotations

from pathlib import Path

from mpcc.errors import InputError
from mpcc.inputs import read_json

STATE_FILE = "trainer_state.json"


def log_history(output_dir: str | Path) -> list[dict]:
    """The trainer's logged entries, with an error naming the folder when there are none."""
    path = Path(output_dir) / STATE_FILE
    try:
        return read_json(path)["log_history"]
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: no trainer log history ({e}); it is written when `mpcc train` ends") from e


def curve(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged metric, over the entries that hold it."""
    points = [(entry["step"], float(entry[key])) for entry in history if key in entry]
    return [s for s, _ in points], [v for _, v in points]


def generated_reward(history: list[dict]) -> tuple[list[int], list[float]]:
    """Mean reward of the generated samples per logged step: `prior/generated_reward` when the run
    injected traces, else `reward`."""
    prior = any("prior/generated_reward" in entry for entry in history)
    return curve(history, "prior/generated_reward" if prior else "reward")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def learning_summary(histories: dict[str, list[dict]], window: int = 10) -> dict:
    """Per run: the generated samples' mean reward over the first, the best and the last `window` logged
    steps (a run can rise and fall back between the two ends), and the mean share of groups whose rewards
    were all equal (no learning signal in GRPO); None when a run logged none. Rendered by
    `mpcc.reports.learning` and `mpcc.evaluation.study_tables`."""
    runs = {}
    for name, history in histories.items():
        _, rewards = generated_reward(history)
        _, flat = curve(history, "frac_reward_zero_std")
        # every `window` logs in a row; all of them when fewer were logged, as the first and last windows
        windows = [rewards[i : i + window] for i in range(max(len(rewards) - window, 0) + 1)]
        runs[name] = {
            "reward_first": _mean(rewards[:window]),
            "reward_last": _mean(rewards[-window:]),
            "reward_peak": max((_mean(w) for w in windows if w), default=None),
            "zero_variance_groups": _mean(flat),
            "logs": len(rewards),
        }
    return {"window": window, "runs": runs}
