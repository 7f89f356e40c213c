"""Selective-prediction measures on arrays of answers: does the model know when it is wrong, and does
looking away from the image tell us more than its entropy does? `mpcc.evaluation.grounding.monitor`
applies them to a run's answers, per task, with intervals.

After "Don't Blink: Evidence Collapse during Multimodal Reasoning" (Raghu & Pandey); only its abstract
and introduction could be read here, so every definition below is mpcc's own. V, the vision feature, is
an answer's `evidence_share` (the share of its image attention that falls on the evidence during the
reasoning), not the raw evidence mass: the raw mass is a share of *all* attended keys and falls as the
reasoning grows whatever the model looks at, so it would partly stand in for length.

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
- AUROC of a score for being wrong: the probability that a wrong answer scores higher than a right
  one, ties counting one half (Mann-Whitney); 0.5 is chance, undefined without both kinds.
- Interaction model: P(correct) = sigmoid(b0 + bE zH + bV zV + bEV zH zV), where zH and zV are the
  entropy and V standardised with the fit data's mean and standard deviation (a standard deviation of 0
  counts as 1). The fit minimises the log loss summed over answers plus ridge / 2 * (bE^2 + bV^2 +
  bEV^2) (the intercept is not penalised) by Newton's method (IRLS), at most 100 steps, stopping when no
  coefficient moves by 1e-8 or more. bEV is the paper's beta_EV in the sign the abstract gives it
  (negative: confident-but-blind answers are hazardous): the vision slope at entropy zH is bV + bEV zH,
  so a negative bEV means looking raises P(correct) the more, the more confident the answer, and a
  confident answer that does not look is the one that loses most. Held-out, the model ranks answers by
  P(correct); its log loss is the mean of -log P(the observed outcome), in nats.
- Vision veto ("abstain when confident but visually disengaged"): a rule chosen on fit answers and
  applied to others. An answer is confident when its entropy is below the fit answers' median, and
  disengaged when its V is below their q-quantile (numpy's linear interpolation); confident and
  disengaged answers are vetoed. The ranking is by -entropy with every vetoed answer moved behind all
  others, so they are abstained on first. q is the one of 0.1, 0.2, 0.3, 0.4, 0.5 with the lowest
  selective risk at the target coverage on the fit answers (ties: the smallest q).
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
    return np.arange(1, confidence.size + 1) / confidence.size, risk_curve(~correct[order])


def risk_curve(wrong_ranked: np.ndarray) -> np.ndarray:
    """risk_k, k = 1..n, of answers already ranked (most confident first), given which are wrong (along
    the last axis, so several rankings of as many answers go at once)."""
    return np.cumsum(wrong_ranked, axis=-1) / np.arange(1, wrong_ranked.shape[-1] + 1)


def aurc(confidence: Sequence[float], correct: Sequence[bool]) -> float:
    """Area under the risk-coverage curve: one number for how well confidence ranks errors last."""
    return float(np.mean(risk_coverage(confidence, correct)[1]))


def selective_risk(confidence: Sequence[float], correct: Sequence[bool], coverage: float = 0.9) -> float:
    """Error rate on the ceil(coverage * n) most confident answers: the risk left after abstaining."""
    coverage = _coverage(coverage)
    return risk_at_coverage(risk_coverage(confidence, correct)[1], coverage)


def risk_at_coverage(risk: np.ndarray, coverage: float) -> float:
    """The selective risk read off a risk-coverage curve (`risk_coverage`'s risks), for callers that
    also want the curve's AURC without ranking twice."""
    return float(risk[kept(risk.size, coverage) - 1])


def kept(n: int, coverage: float) -> int:
    """How many of n answers selective prediction keeps at `coverage`: ceil(coverage * n), at least 1."""
    # The tolerance keeps 0.28 * 25 at 7 answers although it is 7.000000000000001 in floating point.
    return min(max(math.ceil(coverage * n - 1e-9), 1), n)


def auroc(score: Sequence[float], wrong: Sequence[bool]) -> float | None:
    """P(a wrong answer scores higher than a right one), ties one half: how well a score alone tells
    wrong answers from right ones, independent of the error rate; None without both kinds."""
    score = _vector("score", score)
    wrong = _labels("wrong", wrong, score.size)
    group = np.unique(score, return_inverse=True)[1].reshape(-1)
    groups = int(group.max()) + 1
    return auroc_from_counts(
        np.bincount(group[wrong], minlength=groups), np.bincount(group[~wrong], minlength=groups)
    )


def auroc_from_counts(wrong: np.ndarray, right: np.ndarray) -> float | None:
    """The AUROC from the numbers of wrong and right answers at each score value, lowest first: each
    wrong answer beats the right ones below it and ties with those at its value (Mann-Whitney)."""
    n_wrong, n_right = int(wrong.sum()), int(right.sum())
    if n_wrong == 0 or n_right == 0:
        return None
    below = np.cumsum(right) - right
    return float((wrong * (below + right / 2)).sum() / (n_wrong * n_right))


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


COEFFICIENTS = ("intercept", "entropy", "vision", "interaction")


@dataclass(frozen=True)
class InteractionModel:
    """Logistic model of P(correct) from entropy, vision and their product; keeps the fit data's
    standardisation so that held-out data is scaled the same way."""

    intercept: float
    entropy: float
    vision: float
    interaction: float  # beta_EV
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
        """P(correct) for each answer."""
        return np.exp(_log_sigmoid(self._logit(entropy, vision)))

    def log_loss(self, entropy: Sequence[float], vision: Sequence[float], correct: Sequence[bool]) -> float:
        """Mean negative log-likelihood in nats, from the logits so that p near 0 or 1 stays finite."""
        z = self._logit(entropy, vision)
        y = _labels("correct", correct, z.size)
        return float(np.mean(np.logaddexp(0.0, z) - y * z))

    @property
    def coefficients(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in COEFFICIENTS}


def _standardise(values: np.ndarray) -> tuple[float, float]:
    std = float(values.std())
    return float(values.mean()), std if std > 0 else 1.0


def fit_interaction(
    entropy: Sequence[float], vision: Sequence[float], correct: Sequence[bool], ridge: float = 1e-3
) -> InteractionModel:
    """Fit the interaction model by penalised Newton steps; the ridge keeps the slopes finite when the
    fit data separate perfectly, and the intercept is left free so that it matches the accuracy."""
    h = _vector("entropy", entropy)
    v = _vector("vision", vision, h.size)
    y = _labels("correct", correct, h.size).astype(float)
    if not ridge >= 0:
        raise ValidationError(f"ridge must be >= 0, got {ridge}")
    if y.min() == y.max():  # the free intercept would run off to infinity
        raise ValidationError("the fit answers are all right or all wrong: no model of P(correct) to fit")
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
class VetoRule:
    """Which answers the vision veto abstains on first; its thresholds come from fit answers."""

    entropy_threshold: float
    vision_threshold: float
    vision_quantile: float

    def vetoes(self, entropy: np.ndarray, vision: np.ndarray) -> np.ndarray:
        """Confident (entropy below its threshold) and disengaged (V below its threshold): strict, so an
        answer at a threshold is kept."""
        return (entropy < self.entropy_threshold) & (vision < self.vision_threshold)


def veto_risk(entropy: np.ndarray, vetoed: np.ndarray, correct: np.ndarray, coverage: float = 0.9) -> float:
    """Selective risk of the ranking by entropy with the vetoed answers moved behind the rest."""
    # Both sorts are stable, so ties keep input order as in the ranking without veto; the rank becomes
    # the confidence.
    order = np.argsort(entropy, kind="stable")
    order = order[np.argsort(vetoed[order], kind="stable")]
    confidence = np.empty(entropy.size)
    confidence[order] = -np.arange(entropy.size)
    return selective_risk(confidence, correct, coverage)


def choose_veto(
    entropy: Sequence[float], vision: Sequence[float], correct: Sequence[bool], coverage: float = 0.9
) -> VetoRule:
    """The veto's thresholds on fit answers: their median entropy, and the V quantile (of
    VETO_QUANTILES) with the lowest selective risk on them."""
    h = _vector("entropy", entropy)
    v = _vector("vision", vision, h.size)
    ok = _labels("correct", correct, h.size)
    coverage = _coverage(coverage)
    entropy_threshold = float(np.median(h))
    best: VetoRule | None = None
    best_risk = math.inf
    for q in VETO_QUANTILES:
        rule = VetoRule(entropy_threshold, float(np.quantile(v, q)), q)
        risk = veto_risk(h, rule.vetoes(h, v), ok, coverage)
        if risk < best_risk:
            best, best_risk = rule, risk
    return best


def split_halves(item_ids: Iterable[Any]) -> np.ndarray:
    """True for answers in the fit half: crc32 parity of the item id, stable across runs and orders
    (unlike hash()), and the same for every answer of an item."""
    return np.array([zlib.crc32(str(item).encode("utf-8")) % 2 == 0 for item in item_ids], dtype=bool)
