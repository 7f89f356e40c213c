"""Reasoning steps of a completion: grounding reads per-token statistics per step, trace verification
checks its sentences.

The reasoning is the text between the first `<think>` and the first `</think>` after it. Without that
pair it runs from just after the first `<think>` (from the start when there is none) to the first
`</think>` or `<answer>` after that point (to the end when there is neither): untrained models often omit
the tags, and their reasoning is whatever precedes the answer. Nothing outside the reasoning is a step.

The reasoning splits into steps by this rule:

1. A line break (`\\n` or `\\r`) ends a step.
2. A sentence end ends a step: a run of `.`, `!`, `?` or `…` (so an ellipsis "..." too), optionally
   followed by closing quotes or brackets (`"`, `'`, `)`, `]`, `”`, `’`), when whitespace follows it. The
   step ends after the closing characters (`He said "stop."` is one step). A decimal point (`3.5`) has no
   whitespace after it, so it never splits.
3. Except a single `.` ending a known abbreviation, case-insensitive: e.g., i.e., etc., vs., approx., Mr.,
   Mrs., Dr., St., fig., and no. when a number follows it ("no. 3"; a bare "No." is a sentence).
4. An enumerator at the start of a step (the first text of a line, or the text after a sentence end) is
   not a step: `1.`, `2)`, `(3)`, `a.`, `b)`, `(c)`, `-`, `*` or `•`, followed by whitespace or the line
   end. It belongs to the step of the text after it on the same line ("1. The cup is on a table." is one
   step starting at "1."); enumerators with no text after them on their line are no step at all.
5. Each step is stripped of surrounding whitespace and empty steps are dropped; text after the last
   sentence end of a line is a step too. Steps are returned in order as `(start, end)` character offsets
   into the completion, so they never overlap.
"""

from __future__ import annotations

import re

from mpcc.text.answers import ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

_LINE = re.compile(r"[^\r\n]+")
_NON_SPACE = re.compile(r"\S")
_SENTENCE_END = re.compile(r"(?P<mark>[.!?…]+)[\"')\]”’]*(?=\s)")
_ENUMERATORS = re.compile(r"(?:(?:(?:\d+|[A-Za-z])[.)]|\((?:\d+|[A-Za-z])\)|[-*•])(?:\s+|$))+")
# The word before a final ".": its letters, digits and inner dots ("e.g" in "(e.g. a fork").
_WORD_BEFORE = re.compile(r"(?<![\w.])[\w.]+\Z")
_LONGEST_ABBREVIATION = len("approx")
_ABBREVIATIONS = frozenset({"e.g", "i.e", "etc", "vs", "approx", "mr", "mrs", "dr", "st", "fig"})
_NUMBER_NEXT = re.compile(r"\s+\d")


def reasoning_span(completion: str) -> tuple[int, int]:
    """(start, end) of the reasoning; tagless completions still reason, up to the answer."""
    think = completion.find(THINK_OPEN)
    start = 0 if think < 0 else think + len(THINK_OPEN)
    end_think = completion.find(THINK_CLOSE, start)
    if think >= 0 and end_think >= 0:
        return start, end_think
    ends = [found for found in (end_think, completion.find(ANSWER_OPEN, start)) if found >= 0]
    return start, min(ends, default=len(completion))


def _is_abbreviation(text: str, end: re.Match[str], line_end: int) -> bool:
    """A single "." after a known abbreviation ends no sentence; "no." only does when a number follows."""
    if end["mark"] != ".":
        return False
    dot = end.start()
    word = _WORD_BEFORE.search(text, max(0, dot - _LONGEST_ABBREVIATION - 1), dot)
    if word is None:
        return False
    word_text = word.group().lower()
    if word_text == "no":
        return _NUMBER_NEXT.match(text, end.end(), line_end) is not None
    return word_text in _ABBREVIATIONS


def _line_steps(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Steps of the line text[start:end] (no line break inside), rules 2 to 5."""
    steps = []
    first = _NON_SPACE.search(text, start, end)
    while first is not None:
        step_start = first.start()
        enumerators = _ENUMERATORS.match(text, step_start, end)
        body = enumerators.end() if enumerators else step_start
        step_end = end
        for sentence_end in _SENTENCE_END.finditer(text, body, end):
            if not _is_abbreviation(text, sentence_end, end):
                step_end = sentence_end.end()
                break
        content_end = step_start + len(text[step_start:step_end].rstrip())
        if content_end > body:
            steps.append((step_start, content_end))
        first = _NON_SPACE.search(text, step_end, end)
    return steps


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """The steps of text[start:end] by the module docstring's rule, as (start, end) offsets into `text`:
    also the sentences trace verification checks, so both read a think text the same way."""
    end = len(text) if end is None else end
    return [step for line in _LINE.finditer(text, start, end) for step in _line_steps(text, *line.span())]


def split_steps(completion: str) -> list[tuple[int, int]]:
    """The reasoning's steps as (start, end) offsets into `completion`, by the module docstring's rule."""
    return sentence_spans(completion, *reasoning_span(completion))
