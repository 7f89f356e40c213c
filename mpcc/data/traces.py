"""Template reasoning traces built from a row's own columns: context first, the answer last.

They let SFT and prior sampling run on any build without a teacher model (the demo and the tests use
them); a teacher's traces replace them when available.
"""

from __future__ import annotations

import random

from mpcc.text.names import with_article

OPENINGS = ("I see {context}.", "Visible: {context}.", "Around the mask: {context}.")
LINKS = ("These usually go together with", "Scenes like this often have", "Such objects often come with")


def _listing(names: list[str]) -> str:
    names = list(names)
    if not names:
        return "no other annotated objects"
    if len(names) == 1:
        return with_article(names[0])
    return ", ".join(names[:-1]) + f" and {names[-1]}"


def template_trace(context: list[str], solution: str, seed: int) -> str:
    """A short context-to-answer trace; deterministic for a seed. The answer appears only at the end."""
    rng = random.Random(seed)
    shown = [c for c in context if c != solution][:3]
    opening = rng.choice(OPENINGS).format(context=_listing(shown))
    named = with_article(solution)
    return f"{opening} {rng.choice(LINKS)} {named}, so the hidden object is {named}."
