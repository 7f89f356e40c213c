"""Strict answer parsing for evaluation: each completion gives one answer in an accepted form, or None.

The MPCC authors graded multiple choice with a substring test, so "A or B" (or any sentence containing
the right letter) counted as correct. Here the answer is the last complete `<answer>` block; a model
that ignored the format is read from its last non-empty line, which can still be right but never counts
as format-compliant. Multiple-choice and open answers are graded exactly as the training reward
`exact_match` grades them (the parsed letter is the one option that reward would score 1.0), so eval
and training never disagree on a tagged answer. Yes/no is deliberately a little wider than the reward:
an answer that starts with "yes" or "no" and names neither word again ("Yes, it is a cup.") is that
word, because the verdict is unambiguous and eval measures the verdict, not the phrasing.

Other datasets' free-text rows (format `text`, mpcc.evaluation.external) are graded by exact match after
`normalize` (case, punctuation, spacing, a leading article), with no COCO synonyms or plurals: those are
facts about COCO names, not about any dataset's answers. A number is compared by value ("3.50" is "3.5",
"1e1" is "10"; "3.5 cm" is text), since `normalize` would read "3.5" as "35".
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from mpcc.errors import InputError
from mpcc.rewards import MC_FORMATS, choice_score
from mpcc.text.answers import completion_text, extract_answer
from mpcc.text.names import normalize, variants

YES_NO = ("yes", "no")
PARSED_FORMATS = (*MC_FORMATS, "yesno", "open", "text")  # every format an answer is parsed in


def row_format(row: Mapping[str, Any]) -> str:
    """mc4 / mc7 / mc / yesno / open / text; a row without a format asks the open question. An unknown
    format is a data error, raised rather than silently graded as open."""
    fmt = row.get("format") or "open"
    if fmt not in PARSED_FORMATS:
        raise InputError(f"unknown eval format {fmt!r}; expected one of {PARSED_FORMATS}")
    return fmt


def _choice(answer: str, options: Sequence[Any]) -> str | None:
    """The letter the answer names: the letter alone ("B", "(B)", "b.", "B)", "B:"), the letter with
    its own option's text ("B) cup"), or one option's text alone ("cup"). Asking the reward which
    letter scores 1.0 keeps one definition of an accepted choice; anything else names no letter."""
    texts = [str(option) for option in options]
    letters = string.ascii_uppercase[: len(texts)]
    named = [letter for letter in letters if choice_score(answer, texts, letter)]
    return named[0] if len(named) == 1 else None


def free_text(answer: Any) -> str:
    """The comparable form of a `text` answer: a number's value ("3.50" -> "3.5", "-0" -> "0"), else the
    normalised text."""
    text = str(answer).strip().removesuffix(".")
    try:
        value = Decimal(text)
    except InvalidOperation:
        return normalize(answer)
    if not value.is_finite():
        return normalize(answer)
    return "0" if value.is_zero() else format(value.normalize(), "f")


def _yes_no(answer: str) -> str | None:
    """Yes or no when the answer starts with that word and never says the other: "YES!" and "No, it
    isn't." pass; "yes or no", "No... yes", "yesterday" and "Y" do not."""
    words = normalize(answer).split()
    if not words or words[0] not in YES_NO:
        return None
    return words[0] if set(words) & set(YES_NO) == {words[0]} else None


def parse_answer(text: Any, row: Mapping[str, Any]) -> tuple[str | None, bool]:
    """(parsed answer, format_ok) of a completion (text or chat messages) for an eval row.

    Parsed is a letter for mc4/mc7/mc, "yes"/"no" for yesno, the normalised text for open rows,
    `free_text` for text rows, or None when the answer is in no accepted form. format_ok is True only
    for an answer taken from an `<answer>` block that parsed; an answer read from the last line (no
    complete block) is graded but never format-compliant.
    """
    fmt = row_format(row)
    answer = extract_answer(text)
    tagged = answer is not None
    if answer is None:
        lines = [line.strip() for line in completion_text(text).splitlines() if line.strip()]
        answer = lines[-1] if lines else ""
    if fmt in MC_FORMATS:
        parsed = _choice(answer, row["options"])
    elif fmt == "yesno":
        parsed = _yes_no(answer)
    elif fmt == "text":
        parsed = free_text(answer) or None
    else:
        parsed = normalize(answer) or None
    return parsed, tagged and parsed is not None


def is_correct(parsed: str | None, row: Mapping[str, Any]) -> bool:
    """Whether a `parse_answer` result is right: the row's letter or yes/no, or for open rows any
    accepted form of the solution (plural, synonym, spacing: `variants`)."""
    if parsed is None:
        return False
    fmt = row_format(row)
    if fmt in MC_FORMATS:
        return parsed == str(row["answer"]).strip().upper()
    if fmt == "yesno":
        return parsed == normalize(row["answer"])
    if fmt == "text":
        return parsed == free_text(row["solution"])
    return parsed in variants(row.get("solution"))
