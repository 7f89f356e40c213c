"""What the teacher is asked, per mode. Versioned: each trace stores the PROMPT_VERSION it was asked with.

- `guided`: the teacher sees the masked image, the task, the annotated context and the ground truth,
  and writes the reasoning an observer who does not know the answer could follow to it.
- `blind`: the teacher gets exactly the student's prompt (the row's `prompt`: no ground truth; the open
  question for multiple-choice and yes/no rows); only answers that name the hidden object are kept
  (rejection sampling over `tries` samples).

Change any wording below -> bump PROMPT_VERSION, so datasets record which traces came from which words.
"""

from __future__ import annotations

from mpcc.annotation.config import MODES
from mpcc.data.masking import FILL_WORDS
from mpcc.data.prompts import conversation, open_question
from mpcc.errors import ConfigError

PROMPT_VERSION = "mpcc-annotate-1"

GUIDED_SYSTEM = (
    "You write reasoning traces for a visual puzzle. One object in an image is hidden under a mask; a "
    "reader must infer what it is from the visible context and commonsense. You are told the answer, "
    "and you write the reasoning that leads to it from what the image shows."
)
GUIDED_TASK = (
    "One object in this image is hidden under a {fill} mask. The hidden object is: {solution}.\n"
    "Other objects annotated in this image: {context}.\n"
    "Write the reasoning a careful observer who does not know the answer would follow to find it:\n"
    "1. Start with the scene and the objects visible around the mask (what they are, where they are).\n"
    "2. Use commonsense: which objects go together in such a scene, and what the mask's size, shape and "
    "position allow.\n"
    "3. Do not name the hidden object, or any word for it, before the last sentence; the last sentence "
    "concludes with its name.\n"
    "Write 3 to 6 sentences inside <think></think>, then exactly {solution} inside <answer></answer>, "
    "and nothing else."
)


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def guided_messages(row: dict, fill: str) -> list[dict]:
    """Chat messages (TRL's format, an image placeholder before the text) for a guided trace of `row`."""
    context = ", ".join(row.get("context") or []) or "none"
    task = GUIDED_TASK.format(fill=FILL_WORDS[fill], solution=row["solution"], context=context)
    return [
        {"role": "system", "content": [_text(GUIDED_SYSTEM)]},
        {"role": "user", "content": [{"type": "image", "text": None}, _text(task)]},
    ]


def blind_messages(row: dict, fill: str) -> list[dict]:
    """The student's own prompt: the teacher answers the task as the trained model will. A multiple-choice
    or yes/no row asks the open question instead: its trace must name the object, which verification
    checks, and is trained with the row's own answer after it."""
    if (row.get("format") or "open") != "open":
        return conversation(open_question(fill))
    return [dict(message) for message in row["prompt"]]


def teacher_messages(row: dict, mode: str, fill: str) -> list[dict]:
    if mode == "guided":
        return guided_messages(row, fill)
    if mode == "blind":
        return blind_messages(row, fill)
    raise ConfigError(f"unknown annotation mode {mode!r}; choose from {MODES}")
