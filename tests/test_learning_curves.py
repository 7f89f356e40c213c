"""Learning curves read from a run's trainer_state.json (mpcc.training.curves) and their chart."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mpcc.errors import InputError
from mpcc.reports.charts import reward_curve_chart
from mpcc.reports.learning import learning_section
from mpcc.training.curves import curve, generated_reward, learning_summary, log_history

PLAIN = [
    {"step": 1, "reward": 0.0, "frac_reward_zero_std": 1.0, "loss": 0.0},
    {"step": 2, "reward": 0.5, "frac_reward_zero_std": 0.5},
    {"step": 2, "train_runtime": 3.0},  # the trainer's closing entry holds no reward
]
PRIOR = [
    {"step": 1, "reward": 0.9, "prior/generated_reward": 0.1, "frac_reward_zero_std": 0.0},
    {"step": 2, "reward": 1.0, "prior/generated_reward": 0.3, "frac_reward_zero_std": 0.0},
]


def test_generated_reward_leaves_the_injected_traces_out():
    assert generated_reward(PLAIN) == ([1, 2], [0.0, 0.5])
    assert generated_reward(PRIOR) == ([1, 2], [0.1, 0.3])  # TRL's `reward` averages the traces in
    assert curve(PLAIN, "frac_reward_zero_std") == ([1, 2], [1.0, 0.5])


def test_learning_table_first_and_last_logs():
    text = "\n".join(learning_section(learning_summary({"plain": PLAIN, "prior": PRIOR}, window=1)))
    assert "| plain | 0.000 | 0.500 | 0.750 | 2 |" in text
    assert "| prior | 0.100 | 0.300 | 0.000 | 2 |" in text


def test_the_best_window_catches_a_rise_that_falls_back():
    rises = [{"step": k, "reward": r} for k, r in enumerate([0.0, 0.0, 0.4, 0.6, 0.0, 0.0], 1)]
    run = learning_summary({"run": rises}, window=2)["runs"]["run"]
    assert (run["reward_first"], run["reward_peak"], run["reward_last"]) == (0.0, 0.5, 0.0)
    short = learning_summary({"run": rises[2:4], "none": []}, window=10)["runs"]  # fewer logs than a window
    assert [short["run"][k] for k in ("reward_first", "reward_peak", "reward_last")] == [0.5, 0.5, 0.5]
    assert short["none"]["reward_peak"] is None


def test_log_history_reads_the_saved_state_and_names_a_missing_one(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": PRIOR}))
    assert log_history(tmp_path) == PRIOR
    with pytest.raises(InputError, match="empty.*trainer_state.json"):
        log_history(tmp_path / "empty")


def test_reward_curve_chart(tmp_path):
    path = reward_curve_chart(
        {"plain": generated_reward(PLAIN), "prior": generated_reward(PRIOR)}, tmp_path / "c.png"
    )
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300
