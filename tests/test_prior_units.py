"""The prior-sampling pieces that need no model: row splitting of processor outputs, slot choice,
advantages without the trace, the injected trace's answer and when a group counts as failed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mpcc.training.prior import PriorSamplingGRPOTrainer, _select_multimodal_rows


def test_select_rows_of_qwen_style_outputs():
    grid = torch.tensor([[1, 2, 2], [1, 2, 4], [1, 2, 2]])  # 4, 8 and 4 patches
    pixels = torch.arange(16).unsqueeze(1).float()
    fields = {"pixel_values": pixels, "image_grid_thw": grid, "mm_token_type_ids": [[0], [1], [2]]}
    out = _select_multimodal_rows(fields, [0, 2], 3)
    assert out["pixel_values"].squeeze(1).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert out["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 2]]
    assert out["mm_token_type_ids"] == [[0], [2]]
    # two images in one row: rows cannot be split, so the caller generates everything
    assert _select_multimodal_rows({"image_grid_thw": grid, "pixel_values": pixels}, [0], 2) is None


def _fake_trainer(num_generations=4, rank=0, prob=1.0):
    """Just the state `_candidate_slots` reads, with the trainer's own helper methods bound to it."""
    fake = SimpleNamespace(
        args=SimpleNamespace(prior_schedule="constant", prior_prob=prob, seed=0),
        num_generations=num_generations,
        state=SimpleNamespace(global_step=0, max_steps=10),
        accelerator=SimpleNamespace(process_index=rank),
    )
    fake._prior_probability = lambda: PriorSamplingGRPOTrainer._prior_probability(fake)
    fake._global_offset = lambda n: PriorSamplingGRPOTrainer._global_offset(fake, n)
    return fake


def test_one_trace_slot_per_group_across_ranks():
    """Groups of 4 over 2 ranks x 6 rows straddle ranks; the union of both ranks' slots has one per group."""
    rows = [{"reasoning": "r", "solution": "cup"}] * 6
    slots = []
    for rank in (0, 1):
        slots += PriorSamplingGRPOTrainer._candidate_slots(_fake_trainer(rank=rank), rows)
    assert [sum(slots[g * 4 : g * 4 + 4]) for g in range(3)] == [1, 1, 1]
    assert [i for i, s in enumerate(slots) if s] == [3, 7, 11]  # always the group's last slot
    no_trace = [{"reasoning": None, "solution": "x"}] * 8
    assert not any(PriorSamplingGRPOTrainer._candidate_slots(_fake_trainer(), no_trace))


def test_prior_probability_is_a_shared_draw():
    rows = [{"reasoning": "r", "solution": "cup"}] * 400
    fake = _fake_trainer(prob=0.3)
    slots = PriorSamplingGRPOTrainer._candidate_slots(fake, rows)
    assert 15 < sum(slots) < 45  # 100 groups at p = 0.3
    assert slots == PriorSamplingGRPOTrainer._candidate_slots(_fake_trainer(prob=0.3), rows)


def test_linear_schedule_decays_to_zero_over_max_steps():
    """prior_prob x (1 - step / max_steps), and the fraction of groups given a trace follows it."""
    rows = [{"reasoning": "r", "solution": "cup"}] * 4000  # 1000 groups of 4
    fake = _fake_trainer(prob=0.8)
    fake.args.prior_schedule, fake.state.max_steps = "linear", 4
    for step, expected in enumerate([0.8, 0.6, 0.4, 0.2, 0.0, 0.0]):
        fake.state.global_step = step
        assert fake._prior_probability() == pytest.approx(expected)
        injected = sum(PriorSamplingGRPOTrainer._candidate_slots(fake, rows)) / 1000
        assert injected == pytest.approx(expected, abs=0.05)


def test_advantages_centred_on_the_generated_samples():
    trainer = SimpleNamespace(
        num_generations=4, multi_objective_aggregation="sum_then_normalize", scale_rewards="group"
    )
    rewards = torch.tensor([0.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 2.0])
    is_trace = torch.tensor([False, False, False, True, False, False, False, True])
    adv = PriorSamplingGRPOTrainer._advantages_without_traces(trainer, rewards, is_trace)
    first = torch.tensor([0.0, 1.0, 0.0, 2.0])
    assert adv[:4].tolist() == pytest.approx(((first - 1 / 3) / (first.std() + 1e-4)).tolist())
    # every generated sample scored 0: the trace's advantage stays finite (whole-group std)
    second = torch.tensor([0.0, 0.0, 0.0, 2.0])
    assert adv[4:].tolist() == pytest.approx((second / (second.std() + 1e-4)).tolist())
    trainer.scale_rewards = "batch"
    with pytest.raises(ValueError, match="prior_in_group_stats"):
        PriorSamplingGRPOTrainer._advantages_without_traces(trainer, rewards, is_trace)


MC_ROW = {
    "reasoning": "Plates and a saucer sit by the mask.",
    "solution": "cup",
    "format": "mc4",
    "options": ["bowl", "cup", "dog", "laptop"],
    "answer": "B",
}


class _BytesTokenizer:
    """Token ids are UTF-8 bytes: enough to see what text the trainer injects and grades."""

    def encode(self, text, add_special_tokens=False):
        return list(text.encode())

    def batch_decode(self, ids, skip_special_tokens=True):
        return [bytes(i for i in row if i < 256).decode() for row in ids]


def test_injected_trace_answers_with_the_rows_letter():
    fake = SimpleNamespace(
        _tokenizer=_BytesTokenizer(), eos_token_ids=[999], max_completion_length=1000, _warned_long=False
    )
    ids = PriorSamplingGRPOTrainer._trace_ids(fake, MC_ROW)
    assert ids[-1] == 999
    text = _BytesTokenizer().batch_decode([ids])[0]
    assert text.startswith(f"<think> {MC_ROW['reasoning']}</think>") and text.endswith("<answer>B</answer>")
    open_ids = PriorSamplingGRPOTrainer._trace_ids(fake, {"reasoning": "r", "solution": "cup"})
    assert _BytesTokenizer().batch_decode([open_ids])[0].endswith("<answer>cup</answer>")


def test_a_group_fails_unless_a_sample_answers_the_rows_letter():
    from mpcc.rewards import paper_answer_reward

    fake = _fake_trainer(num_generations=2)
    fake._tokenizer = _BytesTokenizer()
    fake._success_reward = paper_answer_reward  # the strictest about what the answer looks like
    fake.args.prior_success_threshold = 1.0
    fake.accelerator = SimpleNamespace(process_index=0, device="cpu", gather=lambda t: t)
    said = ["B", "C", "cup", "A"]  # group 1: one sample gives the letter; group 2: none (the name is not it)
    completions = [list(f"<think>x</think><answer>{a}</answer>".encode()) for a in said]
    assert (
        PriorSamplingGRPOTrainer._groups_failed(fake, completions, [MC_ROW] * 4) == [False] * 2 + [True] * 2
    )
