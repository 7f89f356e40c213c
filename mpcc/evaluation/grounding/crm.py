"""Contrastive region masking (CRM; "Peek-a-Boo Reasoning", Chaturvedi et al.): hide annotated regions
and contrast the model's step-by-step reasoning with its reasoning on the unablated image.

For one answer (the greedy completion on the row's masked image) the *region sets* are: each context
object alone, most answer-predictive first (`Diagnostics.context_by_prediction`), up to
`--crm-regions`; and the `--context-k` most predictive together. Each set's *ablated image* is the
row's image with those objects hidden too (their segmentation, the target's fill).

(a) Teacher-forced contrast, per step s and region set r: delta[s, r] = mean log-probability of the
    step's tokens on the ablated image minus on the original (the same completion, one batched
    forward per answer). Negative: the step leans on the hidden region. A causal attribution of each
    step to each region, no regeneration.
(b) Regenerated contrast: the greedy completion on the ablated image, compared with the original:
    - `answer_changed`: the parsed answer differs;
    - `step_similarity`: for each original step the best word-level similarity
      (difflib ratio) with any regenerated step, averaged over the original steps (0 when the
      regeneration has no steps);
    - `hallucinated`: the regenerated reasoning names (whole words, in any form the exact-match reward
      accepts: `mpcc.text.names.mentions`) a category that is no longer visible anywhere (all its context
      instances hidden by the set), the answer's own category excepted: evidence cited that is not there;
    - `collapse`: the original was well-formed and the regeneration is not (strict parse fails).
Rates are over (answer, region set) pairs; steps are placed at normalised positions (i + 0.5) / n.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

import numpy as np
import torch

from mpcc.evaluation.grounding.forcing import (
    by_level,
    completion_logprobs,
    mean_or_none,
    step_positions,
    teacher_forced,
    token_steps,
)
from mpcc.evaluation.parsing import parse_answer
from mpcc.text.names import mentions
from mpcc.text.steps import split_steps

POSITION_BINS = 5


def region_sets(diagnostics, row: dict, singles: int) -> list[tuple[str, list[int]]]:
    """(kind, annotation ids) to hide: each of the `singles` most predictive context objects, then the
    `diagnostics.k` most predictive together when that is a new set."""
    ordered = diagnostics.context_by_prediction(row)
    sets = [("single", [a]) for a in ordered[:singles]]
    top = ordered[: diagnostics.k]
    if len(top) > 1:
        sets.append(("top_k", top))
    return sets


@torch.inference_mode()
def step_deltas(model, processor, rows: list[dict], completion: str) -> list[list[float | None]]:
    """Per ablated row (rows[1:]), per step: mean step log-prob minus the same on rows[0] (the original)."""
    inputs, prompt_len, offsets = teacher_forced(processor, rows, completion, model.device)
    logprob = completion_logprobs(model(**inputs).logits, inputs["input_ids"], prompt_len).cpu().numpy()
    step_of = np.array(token_steps(offsets, split_steps(completion)))
    steps = range(step_of.max() + 1 if len(step_of) else 0)
    means = [[mean_or_none(lp[step_of == s]) for s in steps] for lp in logprob]
    return [[None if a is None or b is None else a - b for a, b in zip(m, means[0])] for m in means[1:]]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def step_similarity(original: str, regenerated: str) -> float | None:
    """Mean over the original's steps of the best word-level difflib ratio with a regenerated step."""
    before = [_words(original[a:b]) for a, b in split_steps(original)]
    after = [_words(regenerated[a:b]) for a, b in split_steps(regenerated)]
    if not before:
        return None
    if not after:
        return 0.0
    return float(np.mean([max(SequenceMatcher(None, b, a).ratio() for a in after) for b in before]))


def hallucinated(reasoning: str, gone: set[str], solution: str) -> list[str]:
    """The categories in `gone` (no instance left visible) that `reasoning` still names."""
    return sorted(c for c in gone if c != solution and mentions(reasoning, c))


def gone_categories(diagnostics, row: dict, hidden: list[int]) -> set[str]:
    """Categories all of whose visible context instances are hidden by `hidden`."""
    coco = diagnostics.coco
    anns = [a for a in row["context_ann_ids"] if a in coco.anns]
    name = {a: coco.cats[coco.anns[a]["category_id"]]["name"] for a in anns}
    hidden_names = {name[a] for a in hidden}
    visible = {n for a, n in name.items() if a not in hidden and not coco.anns[a].get("iscrowd", 0)}
    return hidden_names - visible


def _bin(position: float) -> int:
    return min(POSITION_BINS - 1, int(position * POSITION_BINS))


def summarise_crm(records: list[dict]) -> dict:
    """Rates and step attributions over (answer, region set) pairs, overall and per level."""
    return by_level(records, _crm_cell, POSITION_BINS)


def _crm_cell(records: list[dict]) -> dict:
    pairs = [s for r in records for s in r["sets"]]
    binned: list[list[float]] = [[] for _ in range(POSITION_BINS)]
    for s in pairs:
        for pos, delta in zip(step_positions(len(s["step_delta"])), s["step_delta"]):
            if delta is not None:
                binned[_bin(pos)].append(delta)
    similarity = [s["step_similarity"] for s in pairs if s["step_similarity"] is not None]
    kinds = {
        k: [s["mean_delta"] for s in pairs if s["kind"] == k and s["mean_delta"] is not None]
        for k in ("single", "top_k")
    }

    def rate(key: str) -> float | None:
        return float(np.mean([bool(s[key]) for s in pairs])) if pairs else None

    return {
        "answers": len(records),
        "pairs": len(pairs),
        "hallucinated_evidence_rate": rate("hallucinated"),
        "collapse_rate": rate("collapse"),
        "answer_change_rate": rate("answer_changed"),
        "step_similarity": float(np.mean(similarity)) if similarity else None,
        "delta_by_position": [float(np.mean(b)) if b else None for b in binned],
        "mean_delta": {k: float(np.mean(v)) if v else None for k, v in kinds.items()},
    }


def crm_record(model, processor, generate, diagnostics, row: dict, completion: str, singles: int) -> dict:
    """Both contrasts for one answer. `generate(rows) -> completions` is the eval's greedy generator."""
    sets = region_sets(diagnostics, row, singles)
    record = {"sets": []}
    if not sets:
        return record
    ablated = [{**row, "image": diagnostics.hide(row, ids)} for _, ids in sets]
    deltas = step_deltas(model, processor, [row, *ablated], completion)
    regenerated = generate(ablated)
    parsed, format_ok = parse_answer(completion, row)
    for (kind, ids), delta, new, ablated_row in zip(sets, deltas, regenerated, ablated):
        new_parsed, new_ok = parse_answer(new, ablated_row)
        reasoning = " ".join(new[a:b] for a, b in split_steps(new))
        gone = gone_categories(diagnostics, row, ids)
        known = [d for d in delta if d is not None]
        record["sets"].append(
            {
                "kind": kind,
                "ann_ids": ids,
                "step_delta": delta,
                "mean_delta": float(np.mean(known)) if known else None,
                "completion": new,
                "answer_changed": new_parsed != parsed,
                "step_similarity": step_similarity(completion, new),
                "hallucinated": hallucinated(reasoning, gone, row["solution"]),
                "collapse": format_ok and not new_ok,
            }
        )
    return record
