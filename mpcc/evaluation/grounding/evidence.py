"""Evidence attention during the model's own reasoning (after "Don't Blink", Raghu & Pandey), measured on
MPCC's free evidence regions: the COCO masks of the context objects. The paper's method section could
not be read here: every definition below is mpcc's own.

For one answer (the greedy completion of an eval row), one teacher-forced forward over prompt +
completion on the row's masked image (`mpcc.evaluation.grounding.attention.measure`) gives, per completion
token, the attention of the forward step that produced it (the query one position earlier), averaged
over heads and the measured layers (`--attention-layers`, default all), on three key groups: `image`
(all image tokens), `evidence` (the image tokens covered by the evidence regions: the union of the
context objects' segmentations minus the hidden region, coverage >= 1/2,
`mpcc.evaluation.grounding.regions`) and `target` (the hidden region's tokens, the fill). Several
answers share one forward (`evidence_records`: right-padded, each read from its own positions), with
the records each would get alone.

Those masses are shares of *all* attended keys, and the keys grow with the reasoning: under uniform
attention the token at query position q puts |E| / (q + 1) on the evidence, so the mass falls along the
reasoning with no change of focus (a random-weight model showed a "collapse" of 0.76). They are kept as
`*_mass_raw` and never used for a claim. The measures are length-free, relative to the image:
- `evidence_share` = sum of evidence mass / sum of image mass over the reasoning tokens: the share of
  image attention that falls on the evidence (|E| / |I| under uniform attention, whatever the length).
  The entropy x vision model and the vision veto (`uncertainty`) read it as V;
- `evidence_lift` = evidence_share / (|E| / |I|): attention per evidence token over attention per image
  token; 1 = no preference for the evidence among the image tokens;
- `early` / `late`: the evidence share over reasoning positions < 1/3 / >= 2/3; `curve`: in `BINS`
  equal position bins (`early_raw`, `late_raw`, `curve_raw`: the same of the raw evidence mass);
- `evidence_overlap`: image tokens ranked by the attention the reasoning tokens pay them (summed over
  those tokens); the share of the top k that are evidence tokens, k = |E| (our definition of the
  evidence-box overlap the paper reports; a ranking blind to the evidence scores |E| / |I| on average:
  the run's `overlap_chance`). A ranking ignores how small the differences are (a near-uniform model
  scores above chance where object tokens differ from a flat background): the lift gives the size;
- `profile`: the evidence share per measured layer and head in each third of the reasoning (`THIRDS`),
  from the same pass;
- the token entropy (nats, `uncertainty.token_entropy`) and log-probability; full-response entropy =
  mean over the whole completion, answer-span entropy = over the tokens inside the final
  <answer></answer> (the block the rewards grade); per step the means of every measure.
A group with no tokens (e.g. no context object covers half a cell) has no mass (null, not zero): such
answers are left out of that group's means, of the interaction model and of the vision veto.

Reasoning tokens are those of the steps (`mpcc.text.steps`); the k-th of K sits at position (k + 0.5) / K.
Per run and level (`summarise_evidence`): means over answers, with item-bootstrap intervals
(`mpcc.evaluation.intervals`) where a claim is made, and the collapse ratio = mean late / mean early
evidence share over the answers that have both (1: no collapse; the paper's 57-91% drops would be
0.43-0.09), `collapse_ratio_raw` the same of the raw mass; the profile as the mean lift per third,
layer and head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mpcc.errors import ValidationError
from mpcc.evaluation.grounding.attention import Measured, measure
from mpcc.evaluation.grounding.forcing import (
    Forced,
    answer_tokens,
    by_level,
    completion_window,
    mean_or_none,
    step_positions,
    teacher_forced_pairs,
    token_logprobs,
    token_steps,
)
from mpcc.evaluation.grounding.regions import grids_tokens
from mpcc.evaluation.grounding.uncertainty import token_entropy
from mpcc.evaluation.intervals import item_bootstrap
from mpcc.families import family
from mpcc.text.steps import split_steps

BINS = 10
GROUPS = ("image", "evidence", "target")
THIRDS = ("early", "middle", "late")  # the profile's reasoning positions [0, 1/3), [1/3, 2/3), [2/3, 1)
DIGITS = 4  # a profile's shares are stored rounded: grounding.jsonl stays small on many-head models


def evidence_record(model, processor, row: dict, completion: str, regions, layers: frozenset[int]) -> dict:
    """The measures above for one answer; `regions` = (evidence, target) HxW bool masks of `row`."""
    return evidence_records(model, processor, [(row, completion, regions)], layers)[0]


@dataclass(frozen=True)
class _Answer:
    """One answer's place in a batched measuring pass."""

    completion: str
    forced: Forced
    image: torch.Tensor  # bool per position of its batch row: the image tokens
    n_steps: int
    step_of: np.ndarray  # per completion token: its step, -1 for none
    own: slice  # the queries that produced its completion tokens, within the pass's kept window

    @property
    def reasoning(self) -> np.ndarray:
        return np.flatnonzero(self.step_of >= 0)


def evidence_records(model, processor, answers: list[tuple], layers: frozenset[int]) -> list[dict]:
    """`evidence_record` of each (row, completion, regions) answer, all from one measuring forward (on a
    CPU, a forward per answer costs more than the answer); each record equals its answer's alone."""
    rows, completions, _ = zip(*answers)
    inputs, forced = teacher_forced_pairs(processor, list(rows), list(completions), model.device)
    ids = inputs["input_ids"].cpu()
    window = completion_window(forced)
    groups = torch.zeros(len(answers), len(GROUPS), ids.shape[1])
    thirds = torch.full((len(answers), window.stop - window.start), -1)  # -1: another row's, or padding
    measured_answers = []
    for i, ((_, completion, regions), f) in enumerate(zip(answers, forced)):
        image = ids[i] == model.config.image_token_id
        grids = family(model.config.model_type).token_grids(processor, _one_row(inputs, i, regions[0].shape))
        if sum(rows * cols for rows, cols, _ in grids) != int(image.sum()):
            raise ValidationError(
                f"{int(image.sum())} image tokens, but the token grids {grids} count others"
            )
        groups[i, 0, image] = 1.0
        for g, region in enumerate(regions, start=1):
            groups[i, g, image] = torch.from_numpy(grids_tokens(region, grids)).float()
        steps = split_steps(completion)
        own = slice(f.produced_by.start - window.start, f.produced_by.stop - window.start)
        answer = _Answer(completion, f, image, len(steps), np.array(token_steps(f.offsets, steps)), own)
        reasoning = answer.reasoning
        third = np.minimum(_positions(len(reasoning)) * len(THIRDS), len(THIRDS) - 1).astype(int)
        thirds[i, own.start + torch.from_numpy(reasoning)] = torch.from_numpy(third)
        measured_answers.append(answer)
    measured = measure(model, inputs, groups.to(model.device), window, layers, thirds, len(THIRDS))
    return [_record(measured, i, inputs["input_ids"], groups[i], a) for i, a in enumerate(measured_answers)]


def _one_row(inputs: dict, i: int, size: tuple[int, int]) -> dict:
    """Row i's token ids, image grid and image (height, width): what a family's `token_grids` reads (one
    image per row). The size is the regions' (masks of the image), for processors that do not return it."""
    row = {k: inputs[k][i : i + 1] for k in ("input_ids", "image_grid_thw", "image_sizes") if k in inputs}
    return {"image_sizes": torch.tensor([size]), **row}


def _record(measured: Measured, i: int, ids: torch.Tensor, groups: torch.Tensor, answer: _Answer) -> dict:
    """Row i's record from the batch's pass: its own queries, its own keys, its logits up to its padding."""
    forced, step_of, reasoning = answer.forced, answer.step_of, answer.reasoning
    mass = measured.mass[i, :, answer.own].cpu().numpy()  # (groups, completion tokens)
    counts = groups.sum(-1).long().tolist()
    mass[[g for g, n in enumerate(counts) if n == 0]] = np.nan  # nothing to look at: no mass, not zero
    logits = measured.logits[i, answer.own]
    entropy = token_entropy(logits).cpu().numpy()
    logprob = token_logprobs(logits, ids[i, forced.prompt_len : forced.length]).cpu().numpy()
    answer_span = answer_tokens(answer.completion, forced.offsets)
    image = answer.image.to(measured.keys.device)
    received = measured.keys[i, image].cpu().numpy() if len(reasoning) else None
    return {
        "tokens": dict(zip(GROUPS, counts)),
        "entropy_full": float(entropy.mean()),
        "entropy_answer": mean_or_none(entropy[answer_span]),
        **reasoning_measures(mass[:, reasoning], counts),
        "evidence_overlap": top_k_overlap(received, groups[1, answer.image].bool().numpy()),
        "profile": _profile(measured.profile[i].cpu().numpy(), measured.layers),
        "steps": [
            {
                "position": round(pos, 4),
                "tokens": int((step_of == s).sum()),
                **{f"{name}_mass_raw": mean_or_none(mass[g, step_of == s]) for g, name in enumerate(GROUPS)},
                "evidence_share": _share(mass[1, step_of == s], mass[0, step_of == s]),
                "entropy": mean_or_none(entropy[step_of == s]),
                "logprob": mean_or_none(logprob[step_of == s]),
            }
            for s, pos in enumerate(step_positions(answer.n_steps))
        ],
    }


def reasoning_measures(mass: np.ndarray, counts: Sequence[int]) -> dict:
    """The per-answer attention measures (module docstring) from the reasoning tokens' masses, a
    (groups, K) array in `GROUPS` order and reasoning order (NaN rows for a group without tokens), and
    the groups' token counts."""
    image, evidence = mass[0], mass[1]
    position = _positions(mass.shape[1])
    early, late = position < 1 / 3, position >= 2 / 3
    bins = [(position >= b / BINS) & (position < (b + 1) / BINS) for b in range(BINS)]
    share = _share(evidence, image)
    return {
        **{f"{name}_mass_raw": mean_or_none(mass[g]) for g, name in enumerate(GROUPS)},
        "evidence_share": share,
        "evidence_lift": None if share is None else share * counts[0] / counts[1],
        "early": _share(evidence[early], image[early]),
        "late": _share(evidence[late], image[late]),
        "curve": [_share(evidence[b], image[b]) for b in bins],
        "early_raw": mean_or_none(evidence[early]),
        "late_raw": mean_or_none(evidence[late]),
        "curve_raw": [mean_or_none(evidence[b]) for b in bins],
    }


def _positions(k: int) -> np.ndarray:
    """Reasoning position of each of k reasoning tokens: (i + 0.5) / k."""
    return (np.arange(k) + 0.5) / max(1, k)


def _share(part: np.ndarray, whole: np.ndarray) -> float | None:
    """sum(part) / sum(whole): None without tokens, or for a group without tokens (NaN masses)."""
    total, of = float(np.sum(part)), float(np.sum(whole))
    return total / of if of > 0 and np.isfinite(total) else None


def top_k_overlap(received: np.ndarray | None, evidence: np.ndarray) -> float | None:
    """Share of the k = |E| image tokens that received the most attention that are evidence tokens; tokens
    tied at the k-th value share the places left (uniform attention scores |E| / |I|, not an order)."""
    k = int(evidence.sum())
    if received is None or k == 0:
        return None
    kth = np.sort(received)[-k]
    above, tied = received > kth, received == kth
    places = k - int(above.sum())
    return float((evidence[above].sum() + places * evidence[tied].mean()) / k)


def _profile(profile: np.ndarray, layers: tuple[int, ...]) -> dict:
    """Evidence share per third, layer and head from (layers, heads, groups, thirds) summed masses."""
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.moveaxis(profile[:, :, 1] / profile[:, :, 0], -1, 0)
    return {"layers": list(layers), "share": _nested(share)}


def _nested(values: np.ndarray) -> list:
    """Rounded nested lists, None for NaN (no tokens in a third, no evidence tokens)."""
    if values.ndim == 0:
        return None if not np.isfinite(values) else round(float(values), DIGITS)
    return [_nested(v) for v in values]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _avg(records: list[dict], key: str) -> float | None:
    return _mean(r.get(key) for r in records)


def _curve(records: list[dict], key: str) -> list[float | None]:
    curves = [r[key] for r in records if r.get(key)]
    return [_mean(c[b] for c in curves) for b in range(BINS)]


def _estimate(records: list[dict], key: str) -> dict:
    """Mean of `key` over the answers that have it, with its item-bootstrap interval."""
    having = [r for r in records if r.get(key) is not None]
    return item_bootstrap(having, lambda rs: _avg(rs, key)).as_dict()


def _collapse(records: list[dict], suffix: str = "") -> dict:
    """Mean late / mean early (`early{suffix}`, `late{suffix}`) over the answers that have both."""
    early, late = f"early{suffix}", f"late{suffix}"
    paired = [r for r in records if r.get(early) is not None and r.get(late) is not None]

    def ratio(rs: list[dict]) -> float | None:
        denominator = sum(r[early] for r in rs)
        return sum(r[late] for r in rs) / denominator if denominator > 0 else None

    return item_bootstrap(paired, ratio).as_dict()


def _evidence_cell(records: list[dict]) -> dict:
    paired = [r for r in records if r.get("early") is not None and r.get("late") is not None]
    overlapped = [r for r in records if r.get("evidence_overlap") is not None]
    return {
        "n": len(records),
        "evidence_share": _estimate(records, "evidence_share"),
        "evidence_lift": _estimate(records, "evidence_lift"),
        "evidence_overlap": _estimate(records, "evidence_overlap"),
        "overlap_chance": _mean(r["tokens"]["evidence"] / r["tokens"]["image"] for r in overlapped),
        "early": _avg(paired, "early"),
        "late": _avg(paired, "late"),
        "collapse_ratio": _collapse(records),
        "curve": _curve(records, "curve"),
        **{f"{name}_mass_raw": _avg(records, f"{name}_mass_raw") for name in GROUPS},
        "early_raw": _avg(records, "early_raw"),
        "late_raw": _avg(records, "late_raw"),
        "collapse_ratio_raw": _collapse(records, "_raw"),
        "curve_raw": _curve(records, "curve_raw"),
        "entropy_full": _avg(records, "entropy_full"),
    }


def _run_profile(records: list[dict]) -> dict | None:
    """Mean evidence lift per third, layer and head over the answers with evidence tokens."""
    profiled = [r for r in records if r.get("profile") and r["tokens"]["evidence"]]
    if not profiled:
        return None
    layers = profiled[0]["profile"]["layers"]
    profiled = [r for r in profiled if r["profile"]["layers"] == layers]
    lifts = np.array(
        [
            np.array(r["profile"]["share"], dtype=float) * r["tokens"]["image"] / r["tokens"]["evidence"]
            for r in profiled
        ]
    )  # (answers, thirds, layers, heads), NaN where a third had no tokens
    counted = np.isfinite(lifts).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(counted > 0, np.nansum(lifts, 0) / counted, np.nan)
    return {"n": len(profiled), "thirds": list(THIRDS), "layers": layers, "lift": _nested(mean)}


def summarise_evidence(records: list[dict]) -> dict:
    """Run-level evidence measures, overall and per level, and the layer x head profile (module docstring)."""
    return {**by_level(records, _evidence_cell, BINS), "profile": _run_profile(records)}
