"""Evidence attention during the model's own reasoning ("Don't Blink", Raghu & Pandey), measured on
MPCC's free evidence regions: the COCO masks of the context objects.

For one answer (the greedy completion of an eval row), one teacher-forced forward over prompt +
completion on the row's masked image (`mpcc.evaluation.grounding.attention.measure`) gives, per completion
token, the attention of the forward step that produced it (the query one position earlier):
- `image`: attention mass on all image tokens;
- `evidence`: mass on the image tokens covered by the evidence regions (union of the context objects'
  segmentations minus the hidden region; coverage >= 1/2, `mpcc.evaluation.grounding.regions`);
- `target`: mass on the image tokens of the hidden region (the fill), reported apart;
- `share` = evidence / image: where on the image the model looks;
- the token's entropy (nats, `uncertainty.token_entropy`) and log-probability.
Masses are averaged over heads and the measured layers (`--attention-layers`, default all). A group
with no tokens (e.g. no context object covers half a cell) has no mass (null, not zero): such answers
are left out of that group's means, of the interaction model and of the vision veto.

Reasoning tokens are those of the steps (`mpcc.text.steps`); a token's reasoning position is
(k + 0.5) / K for the k-th of K reasoning tokens. Per answer: `evidence_mass` (mean over reasoning
tokens), `early` / `late` (mean evidence mass over positions < 1/3 / >= 2/3), the curve (mean
evidence mass in `BINS` equal position bins), and per step the means of every measure. Per run and
level: the means of those over answers, and the collapse ratio = mean late / mean early (1: no
collapse; the paper's 57-91% drops are ratios 0.43-0.09). Full-response entropy = mean token entropy
over the whole completion; answer-span entropy = mean over the tokens inside the final <answer></answer>
(the block the rewards grade).
"""

from __future__ import annotations

import numpy as np
import torch

from mpcc.evaluation.grounding.attention import measure
from mpcc.evaluation.grounding.forcing import (
    answer_tokens,
    by_level,
    completion_logprobs,
    mean_or_none,
    step_positions,
    teacher_forced,
    token_steps,
)
from mpcc.evaluation.grounding.regions import region_tokens, token_grid
from mpcc.evaluation.grounding.uncertainty import token_entropy
from mpcc.text.steps import split_steps

BINS = 10
GROUPS = ("image", "evidence", "target")


def evidence_record(model, processor, row: dict, completion: str, regions, layers: frozenset[int]) -> dict:
    """The measures above for one answer; `regions` = (evidence, target) HxW bool masks of `row`."""
    inputs, prompt_len, offsets = teacher_forced(processor, [row], completion, model.device)
    ids = inputs["input_ids"][0].cpu()
    image = ids == model.config.image_token_id
    grid = token_grid(inputs["image_grid_thw"][0], processor.image_processor.merge_size)
    groups = torch.zeros(1, len(GROUPS), len(ids))
    groups[0, 0, image] = 1.0
    for g, region in enumerate(regions, start=1):
        groups[0, g, image] = torch.from_numpy(region_tokens(region, grid)).float()
    produced_by = slice(prompt_len - 1, len(ids) - 1)
    logits, mass = measure(model, inputs, groups.to(model.device), produced_by, layers)
    mass = mass[0].cpu().numpy()  # (groups, completion tokens)
    counts = groups[0].sum(-1).long().tolist()
    mass[[g for g, n in enumerate(counts) if n == 0]] = np.nan  # nothing to look at: no mass, not zero
    entropy = token_entropy(logits[0, produced_by]).cpu().numpy()
    logprob = completion_logprobs(logits, inputs["input_ids"], prompt_len)[0].cpu().numpy()
    steps = split_steps(completion)
    step_of = np.array(token_steps(offsets, steps))
    reasoning = np.flatnonzero(step_of >= 0)
    position = (np.arange(len(reasoning)) + 0.5) / max(1, len(reasoning))
    evidence = mass[1, reasoning]
    answer = answer_tokens(completion, offsets)
    return {
        "tokens": dict(zip(GROUPS, counts)),
        "entropy_full": float(entropy.mean()),
        "entropy_answer": mean_or_none(entropy[answer]),
        **{f"{name}_mass": mean_or_none(mass[g, reasoning]) for g, name in enumerate(GROUPS)},
        "evidence_share": _share(mass[1, reasoning].sum(), mass[0, reasoning].sum()),
        "early": mean_or_none(evidence[position < 1 / 3]),
        "late": mean_or_none(evidence[position >= 2 / 3]),
        "curve": [
            mean_or_none(evidence[(position >= b / BINS) & (position < (b + 1) / BINS)]) for b in range(BINS)
        ],
        "steps": [
            {
                "position": round(pos, 4),
                "tokens": int((step_of == s).sum()),
                **{name: mean_or_none(mass[g, step_of == s]) for g, name in enumerate(GROUPS)},
                "entropy": mean_or_none(entropy[step_of == s]),
                "logprob": mean_or_none(logprob[step_of == s]),
            }
            for s, pos in enumerate(step_positions(len(steps)))
        ],
    }


def _share(part: float, whole: float) -> float | None:
    return float(part / whole) if whole > 0 and np.isfinite(part) else None


def _avg_values(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _avg(records: list[dict], key: str) -> float | None:
    return _avg_values(r.get(key) for r in records)


def _ratio(late: float | None, early: float | None) -> float | None:
    return late / early if late is not None and early else None


def _evidence_cell(records: list[dict]) -> dict:
    early, late = _avg(records, "early"), _avg(records, "late")
    curve = [_avg_values(r["curve"][b] for r in records) for b in range(BINS)]
    return {
        "n": len(records),
        **{f"{name}_mass": _avg(records, f"{name}_mass") for name in GROUPS},
        "evidence_share": _avg(records, "evidence_share"),
        "early": early,
        "late": late,
        "collapse_ratio": _ratio(late, early),
        "entropy_full": _avg(records, "entropy_full"),
        "curve": curve,
    }


def summarise_evidence(records: list[dict]) -> dict:
    """Run-level evidence measures, overall and per level (see the module docstring)."""
    return by_level(records, _evidence_cell, BINS)
