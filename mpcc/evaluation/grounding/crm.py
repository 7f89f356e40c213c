"""Contrastive region masking (CRM; "Peek-a-Boo Reasoning", Chaturvedi et al.): hide annotated regions
and contrast the model's step-by-step reasoning with its reasoning on the unablated image. The paper's
method section could not be read here: the sets, the control, the classes and the threshold below are
mpcc's own definitions.

For one answer (the greedy completion on the row's masked image) the *region sets* are: each context
object alone, most answer-predictive first (`Diagnostics.context_by_prediction`), up to
`--crm-regions`; and the `--context-k` most predictive together. Each set is ablated twice, the same
way (one batched forward, one generation each): the *evidence* ablation hides the objects themselves
(`--crm-fill`); the *control* ablation hides, per object, a region of the same shape and area placed
away from every object, in a flat colour that changes the image by as much (`Diagnostics.controls`),
so that losing evidence can be told from a perturbation of the same size.

(a) Teacher-forced contrast, per step s and ablated image r: delta[s, r] = mean log-probability of the
    step's tokens on r minus on the original (the same completion). Negative: the step leans on what
    r hides. A causal attribution of each step, no regeneration.
(b) Regenerated contrast: the greedy completion on r, compared with the original:
    - `answer_changed`: the parsed answer differs;
    - `step_similarity`: symmetric: the mean of (for each original step the best word-level difflib
      ratio with a regenerated step, averaged) and the same from the regenerated steps to the
      original's, so added steps lower it as dropped ones do (0 when the regeneration has no steps);
    - `hallucinated`: the regenerated reasoning names (whole words, in any form the exact-match reward
      accepts: `mpcc.text.names.mentions`) a category the evidence set leaves with no visible
      instance, the answer's own category excepted. On the evidence ablation that is evidence cited
      that is not there; on its control (the same categories, still visible) it is the base rate of
      naming them at all, so the contrast is what hiding them changes (0: naming ignores the image);
    - `format_broken`: the original was well-formed and the regeneration is not (strict parse fails).
(c) Classes of a pair, first that applies: `collapsed` (reasoning fell apart: step similarity below
    the 5th percentile of the same answers' control similarities), `hallucinated` (structure kept,
    evidence named that is gone), `flipped` (structure kept, nothing hallucinated, the answer changed),
    `robust`. A pair whose original has no step is not classified.
Rates are over (answer, region set) pairs, each with an item-bootstrap interval
(`mpcc.evaluation.intervals`; the threshold is re-chosen in every resample), per arm and as the
headline contrast evidence minus control; steps sit at normalised positions (i + 0.5) / n.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher

import numpy as np
import torch

from mpcc.evaluation.grounding.forcing import (
    by_level,
    mean_or_none,
    step_positions,
    teacher_forced,
    token_logprobs,
    token_steps,
    window_logits,
)
from mpcc.evaluation.intervals import item_bootstrap
from mpcc.evaluation.parsing import parse_answer
from mpcc.text.names import mentions
from mpcc.text.steps import split_steps

POSITION_BINS = 5
ARMS = ("evidence", "control")
CLASSES = ("robust", "hallucinated", "collapsed", "flipped")
MEASURES = ("answer_change", *CLASSES, "format_break", "step_similarity", "delta")
KINDS = ("single", "top_k")
LEVEL_CONTRASTS = ("answer_change", *CLASSES)
COLLAPSE_QUANTILE = 0.05  # of the control pairs' step similarity: below it, the reasoning collapsed


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
    window = slice(prompt_len - 1, inputs["input_ids"].shape[1] - 1)
    tokens = inputs["input_ids"][:, prompt_len:]
    logprob = token_logprobs(window_logits(model, inputs, window), tokens).cpu().numpy()
    step_of = np.array(token_steps(offsets, split_steps(completion)))
    steps = range(step_of.max() + 1 if len(step_of) else 0)
    means = [[mean_or_none(lp[step_of == s]) for s in steps] for lp in logprob]
    return [[None if a is None or b is None else a - b for a, b in zip(m, means[0])] for m in means[1:]]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def step_similarity(original: str, regenerated: str) -> float | None:
    """Symmetric: the mean of both directions' mean best word-level difflib ratio between steps."""
    before = [_words(original[a:b]) for a, b in split_steps(original)]
    after = [_words(regenerated[a:b]) for a, b in split_steps(regenerated)]
    if not before:
        return None
    if not after:
        return 0.0
    ratio = np.array([[SequenceMatcher(None, b, a).ratio() for a in after] for b in before])
    return float((ratio.max(1).mean() + ratio.max(0).mean()) / 2)


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


def classify(pair: dict, threshold: float) -> str | None:
    """A pair's class (module docstring, (c)) given the collapse threshold; None without steps to compare."""
    if pair["step_similarity"] is None:
        return None
    return "collapsed" if pair["step_similarity"] < threshold else _kept_class(pair)


def _kept_class(pair: dict) -> str:
    """The class of a pair whose reasoning kept its structure."""
    if pair["hallucinated"]:
        return "hallucinated"
    return "flipped" if pair["answer_changed"] else "robust"


def _bin(position: float) -> int:
    return min(POSITION_BINS - 1, int(position * POSITION_BINS))


class _Pairs:
    """The (answer, region set) pairs of some records as arrays, so that a statistic of a bootstrap
    resample is a weighted mean: `counts[i]` = how often record i was drawn."""

    def __init__(self, records: list[dict]):
        sets = [(i, s) for i, r in enumerate(records) for s in r["sets"]]
        self.record = np.array([i for i, _ in sets], dtype=int)
        self.kind = {k: np.array([s["kind"] == k for _, s in sets], dtype=float) for k in KINDS}
        self.arms = {
            "evidence": _arrays([s for _, s in sets]),
            "control": _arrays([s["control"] for _, s in sets]),
        }
        self._thresholds: dict[bytes, float | None] = {}  # every statistic meets the same resamples

    def threshold(self, counts: np.ndarray) -> float | None:
        """The collapse threshold: the COLLAPSE_QUANTILE of the drawn control pairs' step similarity."""
        key = counts.tobytes()
        if key not in self._thresholds:
            control, weight = self.arms["control"], counts[self.record]
            known = control["known"].astype(bool) & (weight > 0)
            similarity = np.repeat(control["step_similarity"][known], weight[known])
            self._thresholds[key] = float(np.quantile(similarity, COLLAPSE_QUANTILE)) if known.any() else None
        return self._thresholds[key]

    def mean(self, arm: str, measure: str, counts: np.ndarray, kind: str | None = None) -> float | None:
        """The drawn pairs' mean of `measure` on one arm: a rate for a class or a flag (pairs of `kind`)."""
        a = self.arms[arm]
        weight = counts[self.record] * a["known" if measure in CLASSES else f"known_{measure}"]
        if kind is not None:
            weight = weight * self.kind[kind]
        total = weight.sum()
        if measure in CLASSES:
            threshold = self.threshold(counts)
            if threshold is None:
                return None
            collapsed = a["step_similarity"] < threshold
            values = collapsed if measure == "collapsed" else ~collapsed & a[measure]
        else:
            values = a[measure]
        return float(values @ weight / total) if total > 0 else None

    def contrast(self, measure: str, counts: np.ndarray) -> float | None:
        evidence, control = (self.mean(arm, measure, counts) for arm in ARMS)
        return None if evidence is None or control is None else evidence - control


def _arrays(pairs: list[dict]) -> dict[str, np.ndarray]:
    """Per pair: each measure (missing: 0) with `known_<measure>` (1 where present); `known`: has a step
    similarity, so a class; per kept-structure class, whether the pair has it (`_kept_class`)."""
    arrays = {
        "answer_change": np.array([bool(p["answer_changed"]) for p in pairs], dtype=float),
        "format_break": np.array([bool(p["format_broken"]) for p in pairs], dtype=float),
        "known_answer_change": np.ones(len(pairs)),
        "known_format_break": np.ones(len(pairs)),
    }
    for measure, key in (("step_similarity", "step_similarity"), ("delta", "mean_delta")):
        arrays[measure] = np.array([p[key] or 0.0 for p in pairs], dtype=float)
        arrays[f"known_{measure}"] = np.array([p[key] is not None for p in pairs], dtype=float)
    arrays["known"] = arrays["known_step_similarity"]
    kept = [_kept_class(p) for p in pairs]
    return arrays | {c: np.array([k == c for k in kept], dtype=bool) for c in CLASSES if c != "collapsed"}


def summarise_crm(records: list[dict]) -> dict:
    """Rates with intervals and step attributions over (answer, region set) pairs, overall and per level:
    overall every measure per arm and as a contrast, per level the contrasts of answer change and the
    classes (what the report shows: each interval costs RESAMPLES statistics)."""
    summary = by_level(records, lambda rs: _crm_cell(rs, LEVEL_CONTRASTS), POSITION_BINS)
    summary["all"] = _crm_cell(records, MEASURES, arms=True)
    return summary


def _crm_cell(records: list[dict], contrasts: tuple[str, ...], arms: bool = False) -> dict:
    table = _Pairs(records)
    draws = [{"item_id": r["item_id"], "index": i} for i, r in enumerate(records)]

    def estimate(statistic) -> dict:
        def on(drawn: list[dict]) -> float | None:
            return statistic(np.bincount([d["index"] for d in drawn], minlength=len(records)))

        return item_bootstrap(draws, on).as_dict()

    evidence = [s for r in records for s in r["sets"]]
    binned: list[list[float]] = [[] for _ in range(POSITION_BINS)]
    for s in evidence:
        for pos, delta in zip(step_positions(len(s["step_delta"])), s["step_delta"]):
            if delta is not None:
                binned[_bin(pos)].append(delta)
    cell = {
        "answers": len(records),
        "pairs": len(evidence),
        "collapse_threshold": table.threshold(np.ones(len(records), dtype=int)) if evidence else None,
        "control_overlap": float(np.mean([s["control"]["overlap"] for s in evidence])) if evidence else None,
        "pixel_change": {
            "evidence": float(np.mean([s["pixel_change"] for s in evidence])) if evidence else None,
            "control": float(np.mean([s["control"]["pixel_change"] for s in evidence])) if evidence else None,
        },
        "contrast": {m: estimate(lambda c, m=m: table.contrast(m, c)) for m in contrasts},
        "mean_delta": {k: estimate(lambda c, k=k: table.mean("evidence", "delta", c, k)) for k in KINDS},
        "delta_by_position": [float(np.mean(b)) if b else None for b in binned],
    }
    if arms:
        for arm in ARMS:
            cell[arm] = {m: estimate(lambda c, arm=arm, m=m: table.mean(arm, m, c)) for m in MEASURES}
    return cell


def _regenerated(completion: str, row: dict, new: str, ablated: dict, delta: list, gone: set[str]) -> dict:
    """One ablated image's measures (module docstring, (a) and (b)) and how much it changed the image:
    the mean absolute change of its RGB values (0-255)."""
    parsed, format_ok = parse_answer(completion, row)
    new_parsed, new_ok = parse_answer(new, ablated)
    known = [d for d in delta if d is not None]
    change = np.abs(np.asarray(ablated["image"], dtype=np.int16) - np.asarray(row["image"], dtype=np.int16))
    return {
        "pixel_change": float(change.mean()),
        "step_delta": delta,
        "mean_delta": float(np.mean(known)) if known else None,
        "completion": new,
        "answer_changed": new_parsed != parsed,
        "step_similarity": step_similarity(completion, new),
        "hallucinated": hallucinated(" ".join(new[a:b] for a, b in split_steps(new)), gone, row["solution"]),
        "format_broken": format_ok and not new_ok,
    }


@dataclass(frozen=True)
class Ablation:
    """One answer's region sets (kind, annotation ids), each set's control (image, overlap) and the
    ablated rows to regenerate: the sets' evidence ablations, then their controls."""

    sets: list[tuple[str, list[int]]]
    controls: list[tuple]
    rows: list[dict]


def ablate(diagnostics, row: dict, singles: int, fill: str) -> Ablation:
    """The ablated images of one answer; `fill` covers the hidden regions (`Diagnostics.ablate`). Made
    apart from `crm_record` so that the regenerations of several answers go in one generate call."""
    sets = region_sets(diagnostics, row, singles)
    if not sets:
        return Ablation([], [], [])
    controls = diagnostics.controls(row, [ids for _, ids in sets], fill)
    ablated = [{**row, "image": diagnostics.hide(row, ids, fill)} for _, ids in sets]
    ablated += [{**row, "image": image} for image, _ in controls]
    return Ablation(sets, controls, ablated)


def crm_record(
    model, processor, diagnostics, row: dict, completion: str, ablation: Ablation, regenerated: list[str]
) -> dict:
    """Both contrasts for one answer, each region set with its control; `regenerated` are the greedy
    completions on `ablation.rows`, in order. Without a `model` (a served one) only the regenerated
    contrast: a served model gives no logits on a completion it did not write (step deltas empty)."""
    sets = ablation.sets
    if not sets:
        return {"sets": []}
    deltas = [[]] * len(ablation.rows)
    if model is not None:
        deltas = step_deltas(model, processor, [row, *ablation.rows], completion)
    arms = [
        _regenerated(completion, row, new, a, delta, gone_categories(diagnostics, row, ids))
        for new, a, delta, (_, ids) in zip(regenerated, ablation.rows, deltas, sets + sets, strict=True)
    ]
    return {
        "sets": [
            {
                "kind": kind,
                "ann_ids": ids,
                **arms[i],
                "control": {**arms[len(sets) + i], "overlap": ablation.controls[i][1]},
            }
            for i, (kind, ids) in enumerate(sets)
        ]
    }
