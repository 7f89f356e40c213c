"""The tags and the final answer of a completion, read one way everywhere.

Rewards grade the answer `extract_answer` reads, evaluation parses the same one and grounding measures
the tokens of its block (`answer_span`), so none of them can disagree on what a completion answers. Scans
are linear (`str.find`/`rfind`, no backtracking regex over a completion): models emit arbitrary text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


def completion_text(completion: Any) -> str:
    """The text of a plain or conversational completion (assistant messages, text parts only)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if not isinstance(completion, Sequence):
        return str(completion)
    pieces = []
    for message in completion:
        if not isinstance(message, Mapping):
            pieces.append(_content_text(message))
        elif message.get("role") in (None, "assistant"):
            pieces.append(_content_text(message.get("content")))
    return "".join(pieces)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        text = content.get("text") if content.get("type", "text") == "text" else None
        return "" if text is None else str(text)
    if isinstance(content, Sequence):
        return "".join(_content_text(part) for part in content)
    return str(content)


def _last_block(text: str, start: int = 0) -> tuple[int, int] | None:
    """Content span of the last `</answer>` in text[start:] and the nearest `<answer>` before it
    (innermost when nested)."""
    close = text.rfind(ANSWER_CLOSE, start)
    if close < 0:
        return None
    opening = text.rfind(ANSWER_OPEN, start, close)
    return None if opening < 0 else (opening + len(ANSWER_OPEN), close)


def answer_span(text: str) -> tuple[int, int] | None:
    """(start, end) of the final answer's block content in `text`: the last complete answer block after
    the last `</think>`, else the last one anywhere (a model that never closes its thinking may still
    answer); None without one."""
    think_end = text.rfind(THINK_CLOSE)
    span = _last_block(text, think_end + len(THINK_CLOSE)) if think_end >= 0 else None
    return _last_block(text) if span is None else span


def extract_answer(text: Any) -> str | None:
    """The final answer of a completion (text or messages): the content of its `answer_span`, stripped;
    None without one."""
    text = completion_text(text)
    span = answer_span(text)
    return None if span is None else text[span[0] : span[1]].strip()
