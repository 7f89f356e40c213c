"""The words the model sees. Versioned so that a dataset records which wording it was built with."""

from __future__ import annotations

from mpcc.data.answer_options import LETTERS
from mpcc.data.masking import FILL_WORDS

PROMPT_VERSION = "mpcc-1"

SYSTEM_PROMPT = (
    "You are a careful visual reasoner. First think through the question step by step, then answer. "
    "Write your reasoning inside <think> </think> and your final answer inside <answer> </answer>, "
    "i.e. <think> reasoning </think><answer> answer </answer>."
)


def _lead(fill: str) -> str:
    return (
        f"One object in this image is hidden under a {FILL_WORDS[fill]} mask. Use the visible "
        "context around the mask and commonsense to infer what it is."
    )


def _article(name: str) -> str:
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def open_question(fill: str) -> str:
    return (
        f"{_lead(fill)} Which object is most likely hidden? Think inside <think></think>, then give "
        "its name as a short phrase inside <answer></answer>."
    )


def choice_question(fill: str, options: list[str]) -> str:
    lines = "\n".join(f"{LETTERS[i]}. {name}" for i, name in enumerate(options))
    return (
        f"{_lead(fill)} Which object is hidden?\n{lines}\nThink inside <think></think>, then give the "
        "letter of the correct option inside <answer></answer>."
    )


def yesno_question(fill: str, candidate: str) -> str:
    return (
        f"{_lead(fill)} Is the hidden object {_article(candidate)}? Think inside <think></think>, then "
        "answer yes or no inside <answer></answer>."
    )


def dataset_question(question: str, fmt: str, options: list[str]) -> str:
    """Another dataset's question (not an mpcc build: BLINK, `mpcc.evaluation.external`) with what to put
    inside <answer>: the letter of one of `options` (`mc`), yes or no (`yesno`), else a free answer."""
    if fmt == "mc":
        lines = "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))
        return (
            f"{question}\n{lines}\nThink inside <think></think>, then give the letter of the correct option "
            "inside <answer></answer>."
        )
    if fmt == "yesno":
        return f"{question}\nThink inside <think></think>, then answer yes or no inside <answer></answer>."
    return (
        f"{question}\nThink inside <think></think>, then give the answer (a word, a short phrase or a "
        "number) inside <answer></answer>."
    )


def conversation(question: str) -> list[dict]:
    """Chat messages as TRL expects for image prompts: the image placeholder precedes the text."""
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": question}]},
    ]
