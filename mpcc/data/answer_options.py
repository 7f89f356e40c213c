"""Answer options: confusable and irrelevant distractors, and the multiple-choice / yes-no items.

Per target we pick, among categories absent from the image, the ones the visible context makes most
plausible (confusable) and a few the context makes implausible from another supercategory
(irrelevant). The split mirrors MPCC-Eval's item layout: 2 "choice" confusions, 2 "judgement"
confusions and 2 irrelevant negatives; the formats take from it:

- mc4:   answer + 2 choice confusions + 1 irrelevant (letters A-D, MPCC-Eval's 4-way)
- mc7:   answer + 2 choice + 2 judgement confusions + 2 irrelevant (A-G)
- yesno: "is it X?" for the answer (yes) and for the 2 judgement confusions and 2 irrelevant (no)
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from mpcc.errors import ConfigError

OPTION_FORMATS = ("mc4", "mc7", "yesno")  # the formats that ask with options (a build's; `open` asks without)
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Distractors:
    choice: tuple[str, ...]
    judgement: tuple[str, ...]
    irrelevant: tuple[str, ...]


def compute_distractors(
    scores: np.ndarray,
    names: Sequence[str],
    supercategories: Sequence[str],
    answer: str,
    present: Iterable[str],
    rng: random.Random,
) -> Distractors:
    """Rank absent categories by context score; top 4 are confusable, 2 low-scoring ones of another
    supercategory are irrelevant. Ties are broken by `rng`, so the result is deterministic per seed."""
    present = set(present) | {answer}
    absent = [k for k, n in enumerate(names) if n not in present]
    tiebreak = {k: rng.random() for k in absent}
    ranked = sorted(absent, key=lambda k: (-scores[k], tiebreak[k]))
    confusable = ranked[:4]
    answer_super = supercategories[names.index(answer)] if answer in names else None
    others = [k for k in ranked[4:] if supercategories[k] != answer_super]
    low = others[len(others) // 2 :] or others
    irrelevant = rng.sample(low, min(2, len(low)))
    return Distractors(
        choice=tuple(names[k] for k in confusable[:2]),
        judgement=tuple(names[k] for k in confusable[2:4]),
        irrelevant=tuple(names[k] for k in irrelevant),
    )


def override_distractors(
    computed: Distractors, answer: str, confusable: Sequence[str] = (), irrelevant: Sequence[str] = ()
) -> Distractors:
    """Supplied lists (e.g. a model's guesses) take precedence; computed ones fill what is missing.

    The answer, blanks and duplicates (case-insensitive) are dropped from what is supplied.
    """
    seen = {answer.strip().lower()}

    def clean(names: Iterable[str]) -> list[str]:
        out = []
        for name in names:
            key = str(name).strip().lower()
            if key and key not in seen:
                seen.add(key)
                out.append(str(name).strip())
        return out

    conf = clean(confusable)
    irr = clean(irrelevant)
    conf += clean(computed.choice + computed.judgement)
    irr += clean(computed.irrelevant)
    return Distractors(tuple(conf[:2]), tuple(conf[2:4]), tuple(irr[:2]))


def make_items(answer: str, d: Distractors, fmt: str, rng: random.Random) -> list[dict]:
    """The rows of one format for one target; [] when there are too few distractors for it."""
    if fmt == "yesno":
        negatives = [(n, "confusable") for n in d.judgement] + [(n, "irrelevant") for n in d.irrelevant]
        if len(negatives) < 4:
            return []
        asked = [(answer, "answer")] + negatives
        return [
            {
                "options": ["yes", "no"],
                "option_kinds": [],
                "answer": "yes" if kind == "answer" else "no",
                "candidate": name,
                "candidate_kind": kind,
            }
            for name, kind in asked
        ]
    if fmt == "mc4":
        pool = (
            [(answer, "answer")]
            + [(n, "confusable") for n in d.choice]
            + [(n, "irrelevant") for n in d.irrelevant[:1]]
        )
        size = 4
    elif fmt == "mc7":
        pool = (
            [(answer, "answer")]
            + [(n, "confusable") for n in d.choice + d.judgement]
            + [(n, "irrelevant") for n in d.irrelevant]
        )
        size = 7
    else:
        raise ConfigError(f"unknown format {fmt!r}; choose from {OPTION_FORMATS}")
    if len(pool) < size:
        return []
    rng.shuffle(pool)
    letter = LETTERS[[kind for _, kind in pool].index("answer")]
    return [
        {
            "options": [n for n, _ in pool],
            "option_kinds": [k for _, k in pool],
            "answer": letter,
            "candidate": "",
            "candidate_kind": "",
        }
    ]
