"""`--diagnostics entropy`: how uncertain each greedy answer is, and whether that tells right from wrong,
for any model: a local one from its logits, a served one from the token log-probs its server returns.

Per answer: `entropy_full` = the mean token entropy over the whole completion (the best text-only
uncertainty signal in "Don't Blink"), `entropy_answer` = over the tokens inside the final
<answer></answer> block (null when there is none). A local model's entropy is over its whole vocabulary
(`uncertainty.token_entropy`, one teacher-forced forward over prompt + completion, several answers
right-padded into one). A server gives only the top k alternatives of each token (OpenAI's API: k <= 20);
their probabilities p_1..p_k and the rest r = 1 - sum p_i counted as one more outcome give
H_k = -sum p_i log p_i - r log r, a lower bound of the token's entropy (mpcc's definition; `source`
says which one a run used).

Per run (`summarise_entropy`): the mean, the AUROC of entropy for being wrong and the AURC of the
ranking by -entropy (`uncertainty`), each with an item-bootstrap interval, beside the AURC of a random
ranking (the error rate) and of the oracle.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mpcc.evaluation.grounding.forcing import (
    answer_tokens,
    completion_window,
    mean_or_none,
    teacher_forced_pairs,
    window_logits,
)
from mpcc.evaluation.grounding.uncertainty import aurc, auroc, token_entropy
from mpcc.evaluation.intervals import item_bootstrap

LOGITS, TOP_LOGPROBS = "logits", "top log-probs"
SERVED_TOP = 20  # alternatives asked of a server per token: the most OpenAI's API gives


@torch.inference_mode()
def entropy_records(model, processor, answers: list[tuple[dict, str]]) -> list[dict]:
    """A local model's entropies of each (row, completion), all from one right-padded forward."""
    rows, completions = zip(*answers)
    inputs, forced = teacher_forced_pairs(processor, list(rows), list(completions), model.device)
    window = completion_window(forced)
    logits = window_logits(model, inputs, window)
    own = [slice(f.produced_by.start - window.start, f.produced_by.stop - window.start) for f in forced]
    return [
        _record(completion, token_entropy(logits[i, mine]).cpu().numpy(), f.offsets, LOGITS)
        for i, (completion, f, mine) in enumerate(zip(completions, forced, own))
    ]


def entropy_of_evidence(record: dict) -> dict:
    """The entropy record of an answer the evidence pass measured: that teacher-forced forward's logits
    give the same entropies (`evidence.evidence_records`), so `--diagnostics evidence,entropy` runs one."""
    return {
        "entropy_full": record["entropy_full"],
        "entropy_answer": record["entropy_answer"],
        "source": LOGITS,
    }


def top_entropy(token: dict) -> float:
    """H_k of one token of a server's `logprobs.content` (module docstring); the sampled token alone when
    the server listed no alternatives."""
    tops = token.get("top_logprobs") or [token]
    p = np.array([math.exp(t["logprob"]) for t in tops], dtype=float)
    p = p[p > 0]
    rest = max(0.0, 1.0 - float(p.sum()))
    return float(-(p * np.log(p)).sum() - (rest * math.log(rest) if rest > 0 else 0.0))


def served_entropy(completion: str, content: list[dict] | None) -> dict | None:
    """A served answer's entropies from its server's per-token log-probs; None when there are none. The
    answer span is found from the tokens' texts, when they spell the completion."""
    if not content:
        return None
    entropy = np.array([top_entropy(t) for t in content])
    ends = np.cumsum([len(t.get("token") or "") for t in content])
    offsets = list(zip((ends - [len(t.get("token") or "") for t in content]).tolist(), ends.tolist()))
    if "".join(t.get("token") or "" for t in content) != completion:
        offsets = [(0, 0)] * len(content)  # no token lies in the answer: entropy_answer is null
    return _record(completion, entropy, offsets, TOP_LOGPROBS)


def _record(completion: str, entropy: np.ndarray, offsets: list[tuple[int, int]], source: str) -> dict:
    return {
        "entropy_full": float(entropy.mean()),
        "entropy_answer": mean_or_none(entropy[answer_tokens(completion, offsets)]),
        "source": source,
    }


def summarise_entropy(records: list[dict]) -> dict:
    """The run's entropy section: mean, AUROC (entropy for wrong), AURC, with intervals; n answers."""
    records = [r for r in records if r.get("entropy_full") is not None]

    def roc(rs: list[dict]) -> float | None:
        return auroc([r["entropy_full"] for r in rs], [not r["correct"] for r in rs])

    def area(rs: list[dict]) -> float:
        return aurc([-r["entropy_full"] for r in rs], [r["correct"] for r in rs])

    if not records:
        return {"n": 0}
    correct = [bool(r["correct"]) for r in records]
    mean = item_bootstrap(records, lambda rs: float(np.mean([r["entropy_full"] for r in rs])))
    return {
        "n": len(records),
        "source": sorted({r["source"] for r in records}),
        "entropy_full": mean.as_dict(),
        "auroc_wrong": item_bootstrap(records, roc).as_dict(),
        "aurc": item_bootstrap(records, area).as_dict(),
        "aurc_random": float(np.mean([not c for c in correct])),
        "aurc_oracle": aurc([float(c) for c in correct], correct),
    }
