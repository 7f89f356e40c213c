"""Whether a teacher's answer is a trace we can train on: our rewards, plus no answer before reasoning.

A trace is trained on as `<think> {reasoning}</think><answer>{solution}</answer>` (SFT's target and the
prior sample; a multiple-choice or yes/no row puts its letter or yes/no after the same reasoning), so
against the solution it must pass the format and exact-match rewards that grade the policy, and its
reasoning must lead *to* the answer: a trace that names the object in its first sentence teaches the
model to guess first and justify after, so the check is explicit. Names count in every form the
exact-match reward accepts (`mpcc.text.names.mentions`: plural, synonyms, spacing). Sentences are split as
the reasoning steps of evaluation are (`mpcc.text.steps.sentence_spans`: "e.g." or an enumerator
"1." ends no sentence).
"""

from __future__ import annotations

from dataclasses import dataclass

from mpcc.rewards import exact_match_reward, format_reward
from mpcc.text.answers import THINK_CLOSE, THINK_OPEN
from mpcc.text.names import mentions
from mpcc.text.steps import sentence_spans


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str | None  # when not ok, the first check that failed (see `verify`)
    reasoning: str | None  # the think text (stripped), as `reasoning` stores it; None when not ok


def think_text(text: str) -> str:
    """The content of the (single) think block of a well-formed answer."""
    return text[text.find(THINK_OPEN) + len(THINK_OPEN) : text.find(THINK_CLOSE)].strip()


def verify(text: str, solution: str, min_words: int | None = None, max_words: int | None = None) -> Verdict:
    """Check a full answer `<think>…</think><answer>…</answer>` against the row's solution.

    In order: the format reward is 1; the exact-match reward is 1; the think text is not empty; its
    first sentence does not name the answer (a one-sentence trace therefore fails); its last sentence
    does (the reasoning ends in the object's name); it has at least `min_words` / at most `max_words`
    words.
    """
    if format_reward([text])[0] != 1.0:
        return Verdict(False, "format", None)
    if exact_match_reward([text], solution=[solution])[0] != 1.0:
        return Verdict(False, "wrong_answer", None)
    reasoning = think_text(text)
    parts = [reasoning[a:b] for a, b in sentence_spans(reasoning)]
    if not parts:
        return Verdict(False, "empty_reasoning", None)
    if mentions(parts[0], solution):
        return Verdict(False, "answer_first", None)
    if not mentions(parts[-1], solution):
        return Verdict(False, "no_conclusion", None)
    words = len(reasoning.split())
    if min_words is not None and words < min_words:
        return Verdict(False, "too_short", None)
    if max_words is not None and words > max_words:
        return Verdict(False, "too_long", None)
    return Verdict(True, None, reasoning)
