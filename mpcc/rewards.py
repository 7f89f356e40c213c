"""Reward functions for MPCC: pure functions of text with TRL's reward signature.

TRL calls each reward as `f(prompts=..., completions=..., completion_ids=..., **columns)`, where every
dataset column arrives as a list aligned with `completions` (plus a few non-list extras such as
`trainer_state`). Completions are plain strings or chat messages. Every reward returns one finite
float per completion for any input and never raises: a crashing or NaN reward would stop or poison a
long training run, and models emit arbitrary text early in training.

Nothing here uses backtracking regexes over the whole completion: the paper's format pattern is cubic
on adversarial text (`"<think>" + "</think><answer>" * 1000` takes ~20 s with `re`), so the tag
structure is checked with linear string scans that accept exactly the same strings.

Two families:
- ours (`format`, `exact_match`, `levenshtein`): strict tags, a normalised answer and accepted forms of
  the category name (plural, spacing, a few synonyms), multiple-choice and yes/no rows graded strictly;
- the MPCC authors' (`paper_format`, `paper_answer`), reproduced exactly for parity runs (open rows;
  multiple-choice and yes/no rows, which their data lacked, compare with the letter or yes/no).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import Levenshtein

from mpcc.errors import ConfigError
from mpcc.text.answers import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    completion_text,
    extract_answer,
)
from mpcc.text.names import normalize, variants

RewardFunc = Callable[..., list[float]]

PAPER_FORMAT_SCORE = 0.6
MC_FORMATS = ("mc4", "mc7", "mc")  # mc: any number of options (other benchmarks, e.g. BLINK)

_LETTER_ONLY = re.compile(r"\(([A-Za-z])\)|([A-Za-z])[.):]?")
_LETTER_AND_TEXT = re.compile(r"(?:\(([A-Za-z])\)|([A-Za-z])[.):])\s*(\S.*)", re.DOTALL)
_WEIGHT_ITEM = re.compile(r"\s*(\w+)\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*")


# ------------------------------------------------------------------------------------------- targets


def trace_completion(reasoning: str, solution: str) -> str:
    """A reasoning trace as the full answer the rewards check: SFT's target, prior sampling's injected
    sample and the form imported and synthetic traces are verified in."""
    return f"{THINK_OPEN} {reasoning.strip()}{THINK_CLOSE}{ANSWER_OPEN}{solution}{ANSWER_CLOSE}"


def target_answer(row: Mapping[str, Any]) -> str:
    """What the model is trained to answer for a row (the answer of its trace completion): the letter of a
    multiple-choice row, yes/no of a yes/no row, else the solution (open rows and older builds without a
    `format` column)."""
    return _target(row.get("solution"), row.get("format"), row.get("options"), row.get("answer"))


# ------------------------------------------------------------------------------------------- grading


def _matches(answer: str | None, name: Any) -> bool:
    return answer is not None and normalize(answer) in variants(name)


def _is_list(values: Any) -> bool:
    return isinstance(values, Sequence) and not isinstance(values, str)


def _aligned(values: Any, n: int) -> list[Any]:
    """A dataset column aligned with the completions; a missing column, a non-list (TRL also passes
    extras such as `trainer_state`) and a short list pad with None."""
    if not _is_list(values):
        return [None] * n
    values = list(values[:n])
    return values + [None] * (n - len(values))


def _rows(completions: Sequence[Any], solution: Any, kwargs: Mapping[str, Any]) -> list[tuple]:
    """(solution, format, options, answer) per completion: the columns a row is graded by, None where
    missing (TRL passes dataset columns as keyword lists)."""
    n = len(completions)
    formats = [None if fmt is None else str(fmt) for fmt in _aligned(kwargs.get("format"), n)]
    options, answers = _aligned(kwargs.get("options"), n), _aligned(kwargs.get("answer"), n)
    return list(zip(_aligned(solution, n), formats, options, answers))


def _letter(match: re.Match[str]) -> str:
    return (match.group(1) or match.group(2)).upper()


def choice_score(answer: str, options: Sequence[Any], correct: str) -> float:
    """Multiple choice, strict: the letter alone, letter + the right option text, or the option text.

    A wrong letter (with or without the right text), the right letter with another option's text, a
    letter outside the options, or text that fits several options equally well all score 0 (the
    authors' substring test accepted any answer containing the letter). Text naming an option exactly
    wins over text that is only a variant of another option ("table" vs "dining table").
    """
    letters = string.ascii_uppercase[: len(options)]
    if correct not in letters:
        return 0.0
    index = letters.index(correct)
    alone = _LETTER_ONLY.fullmatch(answer)
    if alone:
        return float(_letter(alone) == correct)
    with_text = _LETTER_AND_TEXT.fullmatch(answer)
    if with_text and _letter(with_text) in letters:
        return float(_letter(with_text) == correct and _matches(with_text.group(3), options[index]))
    text = normalize(answer)
    named = [i for i, option in enumerate(options) if text and normalize(option) == text]
    named = named or [i for i, option in enumerate(options) if text in variants(option)]
    return float(named == [index])


def _graded_as_choice(fmt: Any, options: Any, correct: Any) -> bool:
    """Whether a row is graded as multiple choice or yes/no: its format says so and its answer columns
    are usable (otherwise it is graded as an open question)."""
    if fmt in MC_FORMATS:
        return _is_list(options) and bool(correct)
    return fmt == "yesno" and correct is not None


def _target(solution: Any, fmt: Any, options: Any, correct: Any) -> Any:
    return correct if _graded_as_choice(fmt, options, correct) else solution


def _answer_score(answer: str | None, solution: Any, fmt: Any, options: Any, correct: Any) -> float:
    if answer is None:
        return 0.0
    if not _graded_as_choice(fmt, options, correct):
        return float(_matches(answer, solution))
    if fmt == "yesno":
        return float(normalize(answer) in ("yes", "no") and normalize(answer) == normalize(correct))
    return choice_score(answer, [str(o) for o in options], str(correct).strip().upper())


def _similarity(answer: str | None, solution: Any) -> float:
    if answer is None:
        return 0.0
    answer = normalize(answer)
    if not answer:
        return 0.0
    return max((Levenshtein.ratio(answer, form) for form in variants(solution)), default=0.0)


def _paper_format_match(text: str) -> bool:
    """`re.match(r"^<think>.*?</think>.*?<answer>.*?</answer>$", text, re.DOTALL)`, in linear time.

    Without MULTILINE, `$` matches at the end or before one final newline, so the text minus that
    newline must match the whole pattern: start with `<think>`, end with `</answer>`, and have some
    `</think>` after the opening tag followed by an `<answer>` that ends before the final `</answer>`.
    The earliest such tags are the best candidates, so two `find`s decide it.
    """
    if text.endswith("\n"):
        text = text[:-1]
    if not (text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE)):
        return False
    think_end = text.find(THINK_CLOSE, len(THINK_OPEN))
    if think_end < 0:
        return False
    answer_start = text.find(ANSWER_OPEN, think_end + len(THINK_CLOSE))
    return 0 <= answer_start <= len(text) - len(ANSWER_CLOSE) - len(ANSWER_OPEN)


def _strict_format(text: str) -> bool:
    text = text.strip()
    if any(text.count(tag) != 1 for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)):
        return False
    if not (text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE)):
        return False
    think_end, answer_start = text.find(THINK_CLOSE), text.find(ANSWER_OPEN)
    between = text[think_end + len(THINK_CLOSE) : answer_start]
    answer = text[answer_start + len(ANSWER_OPEN) : -len(ANSWER_CLOSE)]
    return think_end < answer_start and not between.strip() and bool(answer.strip())


# ------------------------------------------------------------------------------------------- rewards


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 for exactly `<think>...</think><answer>...</answer>` (one block each, whitespace between,
    non-empty answer, nothing around), else 0.0: the answer must be unambiguous to grade."""
    return [float(_strict_format(completion_text(c))) for c in completions]


def exact_match_reward(completions: Sequence[Any], solution: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when the final answer names the hidden object, else 0.0.

    Open rows accept any form in `variants(solution)`; rows whose `format` is mc4/mc7 are graded
    against `options` and the correct letter in `answer`; yesno rows compare yes/no with `answer`.
    """
    rows = _rows(completions, solution, kwargs)
    return [_answer_score(extract_answer(c), *row) for c, row in zip(completions, rows)]


def levenshtein_reward(completions: Sequence[Any], solution: Sequence[Any], **kwargs: Any) -> list[float]:
    """Levenshtein ratio in [0, 1] between the normalised final answer and the closest accepted form
    of the solution: partial credit for near misses (spelling, compounds); 0.0 without an answer.
    Multiple-choice and yes/no rows get their exact-match score: a letter one edit from the right one
    is simply wrong."""
    scores = []
    for c, (sol, *choice) in zip(completions, _rows(completions, solution, kwargs)):
        answer = extract_answer(c)
        graded = _graded_as_choice(*choice)
        scores.append(_answer_score(answer, sol, *choice) if graded else _similarity(answer, sol))
    return scores


def paper_format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """The MPCC authors' format reward: 0.6 when `re.match(r"^<think>.*?</think>.*?<answer>.*?</answer>$",
    completion, re.DOTALL)` succeeds (the whole completion, one final newline allowed), else 0.0."""
    return [PAPER_FORMAT_SCORE * _paper_format_match(completion_text(c)) for c in completions]


def paper_answer_reward(completions: Sequence[Any], solution: Sequence[Any], **kwargs: Any) -> list[float]:
    """The MPCC authors' answer reward: case-sensitive Levenshtein ratio between the solution and the
    text after the LAST `</think>` (their `split('</think>')[-1]`) with the answer tags removed and
    stripped; 0.0 without `</think>` (or without a solution). Their data had open questions only; on a
    multiple-choice or yes/no row (ours) the text is compared with the row's target answer instead (the
    letter, yes or no: `target_answer`), not with the category name."""
    scores = []
    for c, row in zip(completions, _rows(completions, solution, kwargs)):
        text = completion_text(c)
        think_end = text.rfind(THINK_CLOSE)
        sol = _target(*row)
        if think_end < 0 or sol is None:
            scores.append(0.0)
            continue
        after = text[think_end + len(THINK_CLOSE) :]
        after = after.replace(ANSWER_OPEN, "").replace(ANSWER_CLOSE, "").strip()
        scores.append(Levenshtein.ratio(after, str(sol)))
    return scores


# ------------------------------------------------------------------------------------ registry, weights

REWARDS: dict[str, RewardFunc] = {
    "format": format_reward,
    "exact_match": exact_match_reward,
    "levenshtein": levenshtein_reward,
    "paper_format": paper_format_reward,
    "paper_answer": paper_answer_reward,
}

PRESETS: dict[str, dict[str, float]] = {
    # The authors' released code: total in [0, 1.6].
    "paper": {"paper_format": 1.0, "paper_answer": 1.0},
    # Total in [0, 2]. format 0.5: keeps the tags parseable (rewards are 0 otherwise) while a
    # well-formed wrong answer earns only a quarter of the maximum. exact_match 1.0: naming the hidden
    # object is the task. levenshtein 0.5: dense partial credit for near misses, so all-wrong groups
    # still have a gradient; at half weight a near miss never outscores a correct answer.
    "default": {"format": 0.5, "exact_match": 1.0, "levenshtein": 0.5},
}


def _parse_weights(spec: str) -> dict[str, float]:
    """The recipe's string form: "format:0.5,exact_match:1" -> {"format": 0.5, "exact_match": 1.0}."""
    weights = {}
    for item in spec.split(","):
        match = _WEIGHT_ITEM.fullmatch(item)
        if not match:
            raise ConfigError(f"reward weights are name:number,..., got {item.strip()!r} in {spec!r}")
        weights[match.group(1)] = float(match.group(2))
    return weights


def resolve_rewards(spec: str | Mapping[str, float]) -> tuple[list[RewardFunc], list[float]]:
    """A preset name, a {reward name: weight} mapping or its string form "name:weight,..." ->
    (`reward_funcs` for GRPOTrainer, `reward_weights` for GRPOConfig), in the given order."""
    if isinstance(spec, str):
        if ":" in spec:
            spec = _parse_weights(spec)
        elif spec.strip() in PRESETS:
            spec = PRESETS[spec.strip()]
        else:
            raise ConfigError(
                f"unknown reward preset {spec!r}; known presets: {', '.join(PRESETS)} "
                f"(or name:weight,... over {', '.join(REWARDS)})"
            )
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"rewards must be a preset name or a non-empty {{name: weight}} dict, got {spec!r}")
    unknown = [name for name in spec if name not in REWARDS]
    if unknown:
        raise ConfigError(f"unknown rewards {unknown}; known rewards: {', '.join(REWARDS)}")
    weights = []
    for name, weight in spec.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"weight of reward {name!r} must be a finite number, got {weight!r}")
        weights.append(float(weight))
    return [REWARDS[name] for name in spec], weights
