"""Prior sampling under TRL's vLLM path: a trace is weighted as without vLLM, in every importance-sampling
mode and under the off-policy mask; TRL's `sampling/*` metrics cover generated rows only; traces go in a
batch's first generation turn only.

vllm is not installed here and TRL builds its vLLM backend in `GRPOTrainer.__init__`, so each trainer is
built without vLLM and then given what TRL's vLLM branch reads: `use_vllm`, `vllm_mode`,
`_last_loaded_step` and `vllm_generation` (a stand-in for TRL's VLLMGeneration). The rest of the step
(old log-probs, importance ratios, rewards, loss) is TRL's own.
"""

from __future__ import annotations

import logging
import math
import random

import pytest
import torch

from mpcc.train import build_trainer
from mpcc.training.config import load_recipe

MODES = ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
WORDS = ["the", "a", "cup", "plate", "fork", "table", "near", "on", "maybe", "bowl"]


class FakeVLLMGeneration:
    """Returns what TRL's `VLLMGeneration.generate` returns: per row, completion ids (a few words + EOS) and
    each token's sampling log-prob as a top-1 list. The random tiny model is near uniform over its
    vocabulary, so the log-probs are -log(vocab) plus noise: importance ratios spread around 1.

    Server mode checks the contract of TRL's server path: whole groups of identical prompts, since the
    server samples `num_generations` completions from each group's first prompt."""

    def __init__(self, trainer, mode: str):
        self.mode, self.tokenizer, self.eos = mode, trainer._tokenizer, trainer.eos_token_ids[0]
        self.uniform = -math.log(trainer.model.get_output_embeddings().out_features)
        self.rng = random.Random(0)
        self.batch_sizes: list[int] = []

    def sync_weights(self):
        pass

    def generate(self, prompts, images, num_generations, profiler=None):
        if self.mode == "server":
            assert len(prompts) % num_generations == 0
            assert all(p == prompts[i - i % num_generations] for i, p in enumerate(prompts))
        self.batch_sizes.append(len(prompts))
        words = [" ".join(self.rng.choices(WORDS, k=self.rng.randint(3, 10))) for _ in prompts]
        ids = [self.tokenizer.encode(text, add_special_tokens=False) + [self.eos] for text in words]
        logprobs = [[[self.uniform + self.rng.gauss(0, 0.3)] for _ in row] for row in ids]
        return prompts, ids, logprobs, [[[t] for t in row] for row in ids]


def _trainer(tmp_path, mode: str = "sequence_mask"):
    """2 groups of 3 generated samples + the trace; a reward under which the trace scores below the
    generated samples, so its negative advantage leaves it to the off-policy mask's KL test."""
    overrides = {
        "output_dir": tmp_path,
        "max_steps": 1,
        "save_strategy": "no",
        "per_device_train_batch_size": 8,
        "rewards": "exact_match:-1",
        "off_policy_mask_threshold": 0.5,
        "vllm_importance_sampling_mode": mode,
    }
    run, args, model_args = load_recipe(
        "tiny/grpo_prior", [str(x) for k, v in overrides.items() for x in (f"--{k}", v)]
    )
    return build_trainer(run, args, model_args)


def _use_fake_vllm(trainer, mode: str) -> FakeVLLMGeneration:
    """What TRL's vLLM branch reads (see the module docstring)."""
    trainer.use_vllm, trainer.vllm_mode, trainer._last_loaded_step = True, mode, -1
    trainer.vllm_importance_sampling_correction = True  # TRL's default, stated
    trainer.vllm_generation = FakeVLLMGeneration(trainer, mode)
    return trainer.vllm_generation


def _step(trainer) -> dict:
    """Train one step and return, in generation order, the rollout's output, which rows hold a trace,
    the off-policy mask and the multiplier the loss applies to each token (importance ratio x mask)."""
    seen = {}
    score, off_policy_mask, compute_loss = (
        trainer._generate_and_score_completions,
        trainer.get_off_policy_mask,
        trainer._compute_loss,
    )

    def scored(inputs):
        output = score(inputs)
        seen["output"], seen["trace"] = dict(output), torch.tensor(trainer._trace_slot)
        return {**output, "row": torch.arange(len(inputs))}  # TRL shuffles the rows before the loss

    def masked(**kwargs):
        seen["off_policy"] = off_policy_mask(**kwargs)
        return seen["off_policy"]

    def loss(model, inputs):
        value = compute_loss(model, inputs)
        ratio = inputs.get("importance_sampling_ratio", torch.tensor(1.0))  # absent without vLLM
        weight = ratio * seen["off_policy"] * inputs["completion_mask"]
        order = inputs["row"].argsort()
        seen["weight"], seen["off_policy"] = weight[order], seen["off_policy"][order]
        return value

    trainer._generate_and_score_completions, trainer.get_off_policy_mask = scored, masked
    trainer._compute_loss = loss
    trainer.train()
    return seen


def _trace_weights(step: dict) -> torch.Tensor:
    """The loss multiplier of every trace token."""
    trace = step["trace"]
    return step["weight"][trace][step["output"]["completion_mask"][trace].bool()]


@pytest.fixture(scope="module")
def weights_without_vllm(tmp_path_factory) -> torch.Tensor:
    step = _step(_trainer(tmp_path_factory.mktemp("hf")))
    assert step["trace"].tolist() == [False, False, False, True] * 2
    assert (step["output"]["advantages"][step["trace"]] < 0).all()  # the off-policy mask tests the trace
    return _trace_weights(step)


@pytest.mark.parametrize("vllm_mode", ["colocate", "server"])
@pytest.mark.parametrize("mode", MODES)
def test_trace_is_weighted_as_without_vllm(mode, vllm_mode, weights_without_vllm, tmp_path):
    trainer = _trainer(tmp_path, mode)
    fake = _use_fake_vllm(trainer, vllm_mode)
    step = _step(trainer)
    weights = _trace_weights(step)
    assert weights_without_vllm.eq(1).all()
    assert torch.equal(weights, weights_without_vllm), f"trace token weights {weights.unique().tolist()}"
    # one-device colocate skips the trace slots; server mode generates whole groups and replaces them
    assert fake.batch_sizes == [6 if vllm_mode == "colocate" else 8]

    out, generated = step["output"], ~step["trace"]
    tokens = out["completion_mask"].bool() & generated.unsqueeze(1)
    delta = (out["old_per_token_logps"] - out["sampling_per_token_logps"]).abs()[tokens]
    ratio = out["importance_sampling_ratio"]
    ratio = ratio[generated] if mode.startswith("sequence") else ratio[tokens]
    over_generated = {
        "sampling/sampling_logp_difference/mean": delta.mean(),
        "sampling/sampling_logp_difference/max": delta.max(),
        "sampling/importance_sampling_ratio/min": ratio.min(),
        "sampling/importance_sampling_ratio/mean": ratio.mean(),
        "sampling/importance_sampling_ratio/max": ratio.max(),
    }
    logged = trainer.state.log_history[0]
    assert math.isfinite(logged["loss"])
    for name, value in over_generated.items():
        assert logged[name] == pytest.approx(value.item()), name
    with_traces = out["importance_sampling_ratio"]
    with_traces = with_traces if mode.startswith("sequence") else with_traces[out["completion_mask"].bool()]
    assert logged["sampling/importance_sampling_ratio/mean"] != pytest.approx(with_traces.mean().item())


def test_control_certain_trace_logprobs_silence_the_trace(weights_without_vllm, tmp_path):
    """The test can fail: a trace 'sampled with certainty' (logprob 0.0, mpcc's old choice) gets
    exp(sum of its log-probs) ~ 0 as its sequence ratio, and the off-policy mask drops it."""
    trainer = _trainer(tmp_path)
    _use_fake_vllm(trainer, "colocate")
    generate = trainer._generate_single_turn

    def certain(*args, **kwargs):
        ids, logprobs = generate(*args, **kwargs)
        for i, is_trace in enumerate(trainer._trace_slot):
            if is_trace:
                logprobs[i] = [0.0] * len(ids[i])
        return ids, logprobs

    trainer._generate_single_turn = certain
    step = _step(trainer)
    trace = step["trace"]
    assert (step["output"]["importance_sampling_ratio"][trace] < 1e-6).all()
    assert step["off_policy"][trace].eq(0).all()
    assert not torch.equal(_trace_weights(step), weights_without_vllm)


def test_traces_go_in_a_batchs_first_turn_only(tmp_path, caplog):
    """The first generation turn of a batch places its traces; a follow-up turn (TRL's tool-call loop)
    extends generated rows and leaves the batch's trace slots alone; prompts that do not match the batch's
    rows turn prior sampling off for the batch, with a warning."""
    trainer = _trainer(tmp_path)
    fake = _use_fake_vllm(trainer, "colocate")
    trainer.model.train()
    rows, prompts = [trainer.train_dataset[i // 4] for i in range(8)], [[1, 2, 3]] * 8
    trainer._rows = rows
    _, logprobs = trainer._generate_single_turn(prompts, None, {}, 4)
    trace_slots = [False, False, False, True] * 2
    assert trainer._trace_slot == trace_slots and all(math.isnan(x) for x in logprobs[3])
    trainer._generate_single_turn(prompts[:3], None, {}, 4)
    assert trainer._trace_slot == trace_slots and fake.batch_sizes == [6, 3]
    trainer._rows = rows[:7]
    with caplog.at_level(logging.WARNING, logger="mpcc.training.prior"):
        trainer._generate_single_turn(prompts, None, {}, 4)
    assert "prior sampling is off for this batch" in caplog.text and fake.batch_sizes[-1] == 8
