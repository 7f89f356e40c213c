"""Selective-prediction measures for generated answers: does the model know when it is wrong, and does
looking away from the image tell us more than its entropy does?

The measures follow "Don't Blink: Evidence Collapse during Multimodal Reasoning", which publishes no
formulas; these are the definitions used here. Each answer has `correct`, `entropy_full` (mean
next-token entropy over the whole completion, nats), `entropy_answer` (the same over the <answer>
span), `evidence_share` (share of the image attention on the visual evidence during the reasoning) and an
`item_id`; n is the number of answers.

- Token entropy: H = -sum_v p_v log p_v of the next-token distribution, in nats, computed in float32
  from log_softmax so that -inf logits (masked tokens) contribute 0.
- Risk-coverage curve: sort the answers by confidence, highest first (ties keep input order); for
  k = 1..n, coverage_k = k / n and risk_k = (wrong answers among the first k) / k. The confidence of an
  entropy is its negative.
- AURC: the area under that curve, mean of risk_k over k = 1..n; lower is better. An uninformative
  ranking has AURC equal to the error rate in expectation (`random`); the best ranking, every correct
  answer first, gives the `oracle` AURC.
- Selective risk at coverage c: risk_k with k = ceil(c * n), the error rate on the answers kept when
  abstaining on the least confident 1 - c.
- Interaction model: P(wrong) = sigmoid(b0 + b1 zH + b2 zV + b3 zH zV), where zH and zV are
  entropy_full and evidence_share standardised with the fit data's mean and standard deviation (a
  standard deviation of 0 counts as 1). The fit minimises the log loss summed over answers plus
  ridge / 2 * (b1^2 + b2^2 + b3^2) (the intercept is not penalised) by Newton's method (IRLS), at most
  100 steps, stopping when no coefficient moves by 1e-8 or more.
  b3 says whether looking at the evidence changes how much entropy means. It is fitted on the fit half
  and judged on the evaluation half: its AURC ranks those answers by 1 - P(wrong), and its held-out log
  loss is the mean of -log P(the observed outcome), in nats.
- Vision veto ("abstain when confident but visually disengaged"): thresholds come from a fit half and
  are applied to an evaluation half. An answer is confident when its entropy_full is below the fit
  half's median, and disengaged when its evidence_share is below the fit half's q-quantile (numpy's
  linear interpolation); confident and disengaged answers are vetoed. The ranking is by -entropy_full
  with every vetoed answer moved behind all others, so they are abstained on first. q is the one of
  0.1, 0.2, 0.3, 0.4, 0.5 with the lowest selective risk at the target coverage on the fit half
  (ties: the smallest q). Reported on the evaluation half: the selective risk without and with the
  veto, and how many answers were vetoed.
- Halves: an answer is in the fit half when zlib.crc32 of its item id (as a UTF-8 string) is even, so
  all answers to one item fall on the same side, whatever the order or Python's hash seed.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mpcc.errors import ValidationError

if TYPE_CHECKING:
    import torch

VETO_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5)
MAX_ITERATIONS = 100
TOLERANCE = 1e-8
CURVE_POINTS = 101


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each next-token distribution in logits (..., vocab); float32 so that bf16
    logits do not round the entropies of a long completion."""
    import torch

    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValidationError(
            f"token_entropy: logits need a non-empty last (vocab) axis, got {tuple(logits.shape)}"
        )
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    # p = 0 where the logit is -inf: 0 * -inf is nan, but the term is 0 by continuity.
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=-1)


def _floats(name: str, values: Iterable[float]) -> np.ndarray:
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValidationError(f"{name}: expected numbers ({error})") from None


def _vector(name: str, values: Iterable[float], n: int | None = None) -> np.ndarray:
    array = _floats(name, values)
    if array.ndim != 1 or array.size == 0:
        raise ValidationError(f"{name}: expected a non-empty 1-D sequence, got shape {array.shape}")
    if n is not None and array.size != n:
        raise ValidationError(f"{name}: has {array.size} values, expected {n}")
    if not np.all(np.isfinite(array)):
        raise ValidationError(f"{name}: contains missing (None or NaN) or infinite values")
    return array


def _labels(name: str, values: Iterable[bool], n: int) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (n,):
        raise ValidationError(f"{name}: has shape {array.shape}, expected ({n},)")
    if array.dtype != bool and not np.all((array == 0) | (array == 1)):
        raise ValidationError(f"{name}: expected booleans (or 0/1)")
    return array.astype(bool)


def _coverage(coverage: float) -> float:
    if not 0 < coverage <= 1:
        raise ValidationError(f"coverage must be in (0, 1], got {coverage}")
    return float(coverage)


def risk_coverage(confidence: Sequence[float], correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Coverage k/n and risk among the k most confident answers, k = 1..n; the stable sort makes the
    curve reproducible when confidences tie."""
    confidence = _vector("confidence", confidence)
    correct = _labels("correct", correct, confidence.size)
    order = np.argsort(-confidence, kind="stable")
    k = np.arange(1, confidence.size + 1)
    return k / confidence.size, np.cumsum(~correct[order]) / k


def aurc(confidence: Sequence[float], correct: Sequence[bool]) -> float:
    """Area under the risk-coverage curve: one number for how well confidence ranks errors last."""
    return float(np.mean(risk_coverage(confidence, correct)[1]))


def selective_risk(confidence: Sequence[float], correct: Sequence[bool], coverage: float = 0.9) -> float:
    """Error rate on the ceil(coverage * n) most confident answers: the risk left after abstaining."""
    coverage = _coverage(coverage)
    _, risk = risk_coverage(confidence, correct)
    # The tolerance keeps 0.28 * 25 at 7 answers although it is 7.000000000000001 in floating point.
    k = min(max(math.ceil(coverage * risk.size - 1e-9), 1), risk.size)
    return float(risk[k - 1])


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


@dataclass(frozen=True)
class InteractionModel:
    """Logistic model of P(wrong) from entropy, vision and their product; keeps the fit data's
    standardisation so that held-out data is scaled the same way."""

    intercept: float
    entropy: float
    vision: float
    interaction: float
    entropy_mean: float
    entropy_std: float
    vision_mean: float
    vision_std: float

    def _logit(self, entropy: Sequence[float], vision: Sequence[float]) -> np.ndarray:
        h = _vector("entropy", entropy)
        v = _vector("vision", vision, h.size)
        zh = (h - self.entropy_mean) / self.entropy_std
        zv = (v - self.vision_mean) / self.vision_std
        return self.intercept + self.entropy * zh + self.vision * zv + self.interaction * zh * zv

    def predict(self, entropy: Sequence[float], vision: Sequence[float]) -> np.ndarray:
        """P(wrong) for each answer."""
        return np.exp(_log_sigmoid(self._logit(entropy, vision)))

    def log_loss(self, entropy: Sequence[float], vision: Sequence[float], wrong: Sequence[bool]) -> float:
        """Mean negative log-likelihood in nats, from the logits so that p near 0 or 1 stays finite."""
        z = self._logit(entropy, vision)
        y = _labels("wrong", wrong, z.size)
        return float(np.mean(np.logaddexp(0.0, z) - y * z))

    @property
    def coefficients(self) -> dict[str, float]:
        return {
            "intercept": self.intercept,
            "entropy": self.entropy,
            "vision": self.vision,
            "interaction": self.interaction,
        }


def _standardise(values: np.ndarray) -> tuple[float, float]:
    std = float(values.std())
    return float(values.mean()), std if std > 0 else 1.0


def fit_interaction(
    entropy: Sequence[float], vision: Sequence[float], wrong: Sequence[bool], ridge: float = 1e-3
) -> InteractionModel:
    """Fit the interaction model by penalised Newton steps; the ridge keeps the slopes finite when the
    fit data separate perfectly, and the intercept is left free so that it matches the error rate."""
    h = _vector("entropy", entropy)
    v = _vector("vision", vision, h.size)
    y = _labels("wrong", wrong, h.size).astype(float)
    if not ridge >= 0:
        raise ValidationError(f"ridge must be >= 0, got {ridge}")
    if y.min() == y.max():  # the free intercept would run off to infinity
        raise ValidationError("the fit answers are all right or all wrong: no model of P(wrong) to fit")
    (h_mean, h_std), (v_mean, v_std) = _standardise(h), _standardise(v)
    zh, zv = (h - h_mean) / h_std, (v - v_mean) / v_std
    x = np.column_stack([np.ones_like(zh), zh, zv, zh * zv])
    penalty = np.diag([0.0, ridge, ridge, ridge])
    b = np.zeros(4)
    for _ in range(MAX_ITERATIONS):
        p = np.exp(_log_sigmoid(x @ b))
        gradient = x.T @ (p - y) + penalty @ b
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hessian, gradient)
        b = b - step
        if np.max(np.abs(step)) < TOLERANCE:
            break
    return InteractionModel(*(float(c) for c in b), h_mean, h_std, v_mean, v_std)


@dataclass(frozen=True)
class VetoResult:
    """The veto's thresholds (from the fit half) and its effect on the evaluation half."""

    entropy_threshold: float
    vision_threshold: float
    vision_quantile: float
    without_veto: float
    with_veto: float
    vetoed: int


def _veto_risk(entropy: np.ndarray, vetoed: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    # Rank by entropy, then move the vetoed answers behind the rest; both sorts are stable, so ties keep
    # input order as in the ranking without veto. The rank becomes the confidence.
    order = np.argsort(entropy, kind="stable")
    order = order[np.argsort(vetoed[order], kind="stable")]
    confidence = np.empty(entropy.size)
    confidence[order] = -np.arange(entropy.size)
    return selective_risk(confidence, correct, coverage)


def vision_veto(
    entropy: Sequence[float],
    vision: Sequence[float],
    correct: Sequence[bool],
    fit: Sequence[bool],
    coverage: float = 0.9,
) -> VetoResult:
    """Choose the veto's thresholds on the answers where `fit` is true and measure it on the others, so
    that the reported gain is not the quantile search fitting noise."""
    h = _vector("entropy", entropy)
    v = _vector("vision", vision, h.size)
    ok = _labels("correct", correct, h.size)
    in_fit = _labels("fit", fit, h.size)
    coverage = _coverage(coverage)
    if in_fit.all() or not in_fit.any():
        raise ValidationError("vision_veto: `fit` must leave answers on both sides")
    h_fit, v_fit, ok_fit = h[in_fit], v[in_fit], ok[in_fit]
    entropy_threshold = float(np.median(h_fit))
    best: tuple[float, float, float] | None = None  # (fit risk, q, vision threshold)
    for q in VETO_QUANTILES:
        threshold = float(np.quantile(v_fit, q))
        risk = _veto_risk(h_fit, (h_fit < entropy_threshold) & (v_fit < threshold), ok_fit, coverage)
        if best is None or risk < best[0]:
            best = (risk, q, threshold)
    _, q, vision_threshold = best
    h_eval, v_eval, ok_eval = h[~in_fit], v[~in_fit], ok[~in_fit]
    vetoed = (h_eval < entropy_threshold) & (v_eval < vision_threshold)
    return VetoResult(
        entropy_threshold=entropy_threshold,
        vision_threshold=vision_threshold,
        vision_quantile=q,
        without_veto=selective_risk(-h_eval, ok_eval, coverage),
        with_veto=_veto_risk(h_eval, vetoed, ok_eval, coverage),
        vetoed=int(vetoed.sum()),
    )


def split_halves(item_ids: Iterable[Any]) -> np.ndarray:
    """True for answers in the fit half: crc32 parity of the item id, stable across runs and orders
    (unlike hash()), and the same for every answer of an item."""
    return np.array([zlib.crc32(str(item).encode("utf-8")) % 2 == 0 for item in item_ids], dtype=bool)


def _optional(records: Sequence[dict], key: str) -> np.ndarray:
    """A measure that may be absent: None becomes NaN, so that one mask drops both."""
    return _floats(key, [math.nan if r.get(key) is None else r[key] for r in records])


def _curve(confidence: np.ndarray, correct: np.ndarray) -> dict[str, list[float]]:
    """The risk-coverage curve thinned to at most CURVE_POINTS points for charting, last point kept."""
    coverage, risk = risk_coverage(confidence, correct)
    n = coverage.size
    index = np.arange(n) if n <= CURVE_POINTS else np.linspace(0, n - 1, CURVE_POINTS).round().astype(int)
    return {"coverage": coverage[index].tolist(), "risk": risk[index].tolist()}


def _fields(records: Sequence[dict], key: str) -> list:
    for i, record in enumerate(records):
        if key not in record:
            raise ValidationError(f"uncertainty_report: record {i} has no {key!r}")
    return [record[key] for record in records]


def uncertainty_report(records: Sequence[dict], coverage: float = 0.9, min_per_half: int = 8) -> dict:
    """The selective-prediction measures of one eval run as a JSON-ready dict (see the module docstring).

    AURCs and the full-entropy risk use every record, the answer-entropy ones the records that have
    entropy_answer. The interaction model and the veto use the records with evidence_share, split into
    halves by item (`n_fit`, `n_eval`); they are None when a half has fewer than `min_per_half` records,
    and the interaction AURC is over the evaluation half only.
    """
    if not records:
        raise ValidationError("uncertainty_report: no records")
    coverage = _coverage(coverage)
    if min_per_half < 1:
        raise ValidationError(f"min_per_half must be >= 1, got {min_per_half}")
    correct = _labels("correct", _fields(records, "correct"), len(records))
    entropy = _vector("entropy_full", _fields(records, "entropy_full"), len(records))
    item_ids = _fields(records, "item_id")
    answer = _optional(records, "entropy_answer")
    vision = _optional(records, "evidence_share")

    has_answer = ~np.isnan(answer)
    answer_aurc = aurc(-answer[has_answer], correct[has_answer]) if has_answer.any() else None
    answer_curve = _curve(-answer[has_answer], correct[has_answer]) if has_answer.any() else None

    has_vision = ~np.isnan(vision)
    in_fit = split_halves(i for i, keep in zip(item_ids, has_vision) if keep)
    n_fit, n_eval = int(in_fit.sum()), int((~in_fit).sum())
    enough = min(n_fit, n_eval) >= min_per_half
    h, v, ok = entropy[has_vision], vision[has_vision], correct[has_vision]

    interaction = interaction_aurc = None
    veto = dict.fromkeys(
        ("without_veto", "with_veto", "vetoed", "entropy_threshold", "vision_threshold", "vision_quantile")
    )
    both = enough and 0 < int(ok[in_fit].sum()) < n_fit  # right and wrong answers to fit on
    if both:
        model = fit_interaction(h[in_fit], v[in_fit], ~ok[in_fit])
        held_out = (h[~in_fit], v[~in_fit])
        interaction_aurc = aurc(1 - model.predict(*held_out), ok[~in_fit])
        interaction = {
            **model.coefficients,
            "heldout_log_loss": model.log_loss(*held_out, ~ok[~in_fit]),
            "aurc_entropy_full_eval_half": aurc(-h[~in_fit], ok[~in_fit]),  # the same answers, for comparison
            "n_fit": n_fit,
            "n_eval": n_eval,
        }
    if enough:
        result = vision_veto(h, v, ok, in_fit, coverage)
        veto = {key: getattr(result, key) for key in veto}

    return {
        "n": len(records),
        "n_fit": n_fit,
        "n_eval": n_eval,
        "aurc": {
            "entropy_full": aurc(-entropy, correct),
            "entropy_answer": answer_aurc,
            "interaction": interaction_aurc,
            "random": float(np.mean(~correct)),
            "oracle": aurc(correct.astype(float), correct),
        },
        "risk_at_coverage": {
            "coverage": coverage,
            "entropy_full": selective_risk(-entropy, correct, coverage),
            **veto,
        },
        "interaction": interaction,
        "curves": {"entropy_full": _curve(-entropy, correct), "entropy_answer": answer_curve},
    }
