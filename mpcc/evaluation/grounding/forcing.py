"""A completion fed back through the model (teacher forcing) and read per token, per reasoning step and
per difficulty level: the plumbing the evidence and CRM measures share.

A token belongs to the last step it shares a character with: the step holding its last character, or,
for a token that ends in whitespace or a tag (Qwen2 tokenizes ".\\n" and ".</" as one token), the step
holding its text. Tokens of whitespace between steps, tags, the answer and zero-length tokens belong to
no step (-1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mpcc.data.difficulty import LEVELS
from mpcc.errors import ValidationError
from mpcc.generation.generators import prompt_inputs
from mpcc.text.answers import answer_span


@dataclass(frozen=True)
class Forced:
    """One (row, completion) pair's place in a teacher-forced batch: its tokens are the batch row's first
    `length`, the completion from `prompt_len` on; right padding after them."""

    prompt_len: int
    length: int
    offsets: list[tuple[int, int]]  # the completion tokens' character offsets

    @property
    def produced_by(self) -> slice:
        """The query positions whose next-token predictions are the completion's tokens."""
        return slice(self.prompt_len - 1, self.length - 1)


def teacher_forced_pairs(
    processor, rows: list[dict], completions: list[str], device
) -> tuple[dict, list[Forced]]:
    """(inputs on `device`, one `Forced` per pair): each row's prompt followed by its own completion, as
    one right-padded batch. Right, not left: every pair's tokens keep the positions they have alone (a
    Llama-style model counts positions from 0 whatever the mask; Qwen's rope index skips masked tokens),
    and a padded query still has its own tokens to attend to (a left-padded one attends to nothing: NaN)."""
    prompts = prompt_inputs(processor, rows)  # left-padded: re-laid below
    encoded = [
        processor.tokenizer(c, add_special_tokens=False, return_offsets_mapping=True) for c in completions
    ]
    if any(len(e["input_ids"]) == 0 for e in encoded):
        raise ValidationError("an empty completion has nothing to measure")
    real = prompts["attention_mask"].bool()
    forced = [
        Forced(int(n), int(n) + len(e["input_ids"]), [tuple(o) for o in e["offset_mapping"]])
        for n, e in zip(real.sum(1), encoded)
    ]
    width = max(f.length for f in forced)
    inputs = dict(prompts)
    # the token-aligned tensors; the types (Gemma 3 names them token_type_ids) are 0 for text and padding
    for key in ("input_ids", "mm_token_type_ids", "token_type_ids"):
        if key not in prompts:
            continue
        tokens = prompts[key]
        laid = tokens.new_full(
            (len(rows), width), processor.tokenizer.pad_token_id if key == "input_ids" else 0
        )
        for i, (f, e) in enumerate(zip(forced, encoded)):
            laid[i, : f.prompt_len] = tokens[i, real[i]]
            if key == "input_ids":
                laid[i, f.prompt_len : f.length] = torch.tensor(e["input_ids"], dtype=tokens.dtype)
        inputs[key] = laid
    lengths = torch.tensor([f.length for f in forced])
    inputs["attention_mask"] = (torch.arange(width)[None] < lengths[:, None]).long()
    inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
    return inputs, forced


def teacher_forced(
    processor, rows: list[dict], completion: str, device
) -> tuple[dict, int, list[tuple[int, int]]]:
    """(inputs on `device`, prompt length, completion token offsets): each row's prompt followed by the
    same `completion`, as one batch. The rows' images must give equal prompt lengths (same image size)."""
    inputs, forced = teacher_forced_pairs(processor, rows, [completion] * len(rows), device)
    if len({f.prompt_len for f in forced}) > 1:
        raise ValidationError("teacher-forced rows must share one prompt length (images of one size)")
    return inputs, forced[0].prompt_len, forced[0].offsets


def completion_window(forced: list[Forced]) -> slice:
    """The query positions whose next-token predictions are some pair's completion tokens."""
    return slice(min(f.prompt_len for f in forced) - 1, max(f.length for f in forced) - 1)


def window_logits(model, inputs: dict, window: slice) -> torch.Tensor:
    """The forward's logits at the `window` positions only: the prompt's (image tokens included) are
    never read, and their vocabulary-wide rows would be most of the pass's memory on a large model."""
    keep = torch.arange(window.start, window.stop, device=inputs["input_ids"].device)
    return model(**inputs, logits_to_keep=keep).logits


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The log-probability of each of `tokens` (...,) under the logits (..., vocab) that predict it."""
    scores = logits.float().log_softmax(-1)
    return scores.gather(-1, tokens[..., None].to(scores.device)).squeeze(-1)


def answer_tokens(completion: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """Bool per token: does its last character lie inside the answer block the rewards grade
    (`mpcc.text.answers.answer_span`)?"""
    span = answer_span(completion)
    ends = np.array([b - 1 for _, b in offsets])
    if span is None:
        return np.zeros(len(offsets), dtype=bool)
    return (ends >= span[0]) & (ends < span[1]) & (np.array([b > a for a, b in offsets]))


def mean_or_none(values: np.ndarray) -> float | None:
    """None for no values, or for a group without tokens (its masses are NaN)."""
    return float(values.mean()) if len(values) and not np.isnan(values).any() else None


def token_steps(offsets: list[tuple[int, int]], steps: list[tuple[int, int]]) -> list[int]:
    """The step index of each token (-1 for none), from a fast tokenizer's offset_mapping.

    A token belongs to the last step it overlaps, so " The" counts despite its leading space and ".\\n"
    keeps its step's period. Both lists are sorted (token ends never decrease), so one pass suffices.
    """
    indices = []
    step = 0
    for start, end in offsets:
        if end <= start:
            indices.append(-1)
            continue
        while step + 1 < len(steps) and steps[step + 1][0] < end:
            step += 1
        overlaps = step < len(steps) and steps[step][0] < end and steps[step][1] > start
        indices.append(step if overlaps else -1)
    return indices


def step_positions(n_steps: int) -> list[float]:
    """Where each of n steps sits in the reasoning, in (0, 1): step centres, so traces of any length align."""
    return [(index + 0.5) / n_steps for index in range(n_steps)]


def by_level(records: list[dict], cell, bins: int) -> dict:
    """`cell(records)` overall and per difficulty level, with the centres of `bins` position bins."""
    levels = {lv: [r for r in records if r.get("difficulty") == lv] for lv in LEVELS}
    return {
        "all": cell(records),
        "per_level": {lv: cell(rs) for lv, rs in levels.items() if rs},
        "bins": [round((b + 0.5) / bins, 4) for b in range(bins)],
    }
