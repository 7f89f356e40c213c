"""Template reasoning traces built from a row's own columns: context first, the answer last.

They let SFT and prior sampling run on any build without a teacher model (the demo and the tests use
them); a teacher's traces replace them when available.
"""

from __future__ import annotations

import random

OPENINGS = (
    "Around the masked region I can see {context}.",
    "The visible part of the scene shows {context}.",
    "Looking at what is not hidden, there is {context}.",
)
LINKS = (
    "Objects like these usually appear together with one more thing of about the mask's size and shape.",
    "Such a scene commonly also contains an object that would fill a gap like the masked one.",
    "Given where the mask sits among these objects, the missing piece should belong to the same setting.",
)


def _listing(names: list[str]) -> str:
    names = list(names)
    if not names:
        return "no other annotated objects"
    if len(names) == 1:
        return f"a {names[0]}"
    return ", ".join(names[:-1]) + f" and {names[-1]}"


def template_trace(context: list[str], solution: str, seed: int) -> str:
    """A short context-to-answer trace; deterministic for a seed. The answer appears only at the end."""
    rng = random.Random(seed)
    shown = [c for c in context if c != solution][:5]
    return " ".join(
        [
            rng.choice(OPENINGS).format(context=_listing(shown)),
            rng.choice(LINKS),
            f"The most likely hidden object is therefore a {solution}.",
        ]
    )
