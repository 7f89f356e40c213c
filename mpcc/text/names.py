"""Category names in every accepted form, and written with the right article in generated traces.

Exact match accepts what `variants` lists; trace verification and CRM find names with `mentions`, in the
same forms, so a name one accepts ("knives", "television") is never missed by the other.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

# COCO names that people and models write differently. Keys are COCO category names, values the other
# accepted names; lookups work from any member of a group. Plurals and spacing are derived, not listed.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "tv": ("television", "tv monitor", "tv set"),
    "couch": ("sofa",),
    "cell phone": ("mobile phone", "phone", "smartphone"),
    "motorcycle": ("motorbike",),
    "airplane": ("aeroplane", "plane"),
    "bicycle": ("bike",),
    "dining table": ("table",),
    "potted plant": ("plant", "houseplant"),
    "hair drier": ("hair dryer",),
    "sports ball": ("ball",),
    "donut": ("doughnut",),
    "remote": ("remote control",),
    "fire hydrant": ("hydrant",),
}

# Singular -> plural where the English rule below is wrong; read both ways.
_IRREGULAR_PLURALS = {
    "person": "people",
    "man": "men",
    "woman": "women",
    "child": "children",
    "mouse": "mice",
    "knife": "knives",
    "sheep": "sheep",
    "ski": "skis",
    "scissors": "scissors",
}
_IRREGULAR_SINGULARS = {plural: singular for singular, plural in _IRREGULAR_PLURALS.items()}
_ARTICLES = ("a", "an", "the")
# Dropped without a space so that "t.v." -> "tv" and "people's" -> "peoples"; other punctuation and
# symbols separate words ("hot-dog" -> "hot dog").
_DELETED = dict.fromkeys(map(ord, ".'\u2019"), None)
_NON_WORD = re.compile(r"[^\w\s]|_")


def normalize(text: Any) -> str:
    """Comparable form of a name: NFKC, lowercase, no punctuation, single spaces, no leading article."""
    text = unicodedata.normalize("NFKC", str(text)).lower().translate(_DELETED)
    words = _NON_WORD.sub(" ", text).split()
    if len(words) > 1 and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


def _pluralize(word: str) -> str:
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if len(word) > 1 and word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _singulars(word: str) -> set[str]:
    """Singular candidates of a word that may be plural; `-ses` is ambiguous (buses, horses): both."""
    if word in _IRREGULAR_SINGULARS:
        return {_IRREGULAR_SINGULARS[word]}
    if len(word) <= 2 or word.endswith(("ss", "us", "is")) or not word.endswith("s"):
        return set()
    if word.endswith("ies"):
        return {word[:-3] + "y"}
    if word.endswith(("ches", "shes", "xes", "zes", "sses")):
        return {word[:-2]}
    if word.endswith("ses"):
        return {word[:-1], word[:-2]}
    return {word[:-1]}


def _inflections(name: str) -> set[str]:
    """The name with its last word in singular and plural form ("wine glass" -> "wine glasses"); a
    word that reads as a plural is only singularised ("cups" -> "cup", not "cupses")."""
    *head, last = name.split(" ")
    words = {last} | (_singulars(last) or {_pluralize(last)})
    return {" ".join([*head, word]) for word in words}


def _synonym_groups() -> dict[str, frozenset[str]]:
    groups: dict[str, frozenset[str]] = {}
    for canonical, others in SYNONYMS.items():
        group = frozenset(normalize(name) for name in (canonical, *others))
        for name in group:
            groups[name] = groups.get(name, frozenset()) | group
    return groups


_GROUPS = _synonym_groups()


def variants(name: Any) -> set[str]:
    """Normalised forms accepted for a category name: itself, its synonyms, singular and plural of
    each, and each with its spaces removed ("hot dog" -> "hotdog"). Hyphens need no entry: `normalize`
    turns them into spaces. Empty for a missing name (None) or one that normalises to nothing."""
    base = "" if name is None else normalize(name)
    if not base:
        return set()
    roots = {base} | {singular for singular in _inflections(base) if singular in _GROUPS}
    named = set().union(*(_GROUPS.get(root, {root}) for root in roots))
    forms = set().union(*(_inflections(form) for form in named))
    return forms | {form.replace(" ", "") for form in forms}


def with_article(name: str) -> str:
    """`name` after "an" when it starts with a vowel letter, else after "a" ("an apple", "an umbrella",
    "a cup"). By spelling, not sound: right for every COCO and synthetic name, wrong only for names like
    "unicorn" or "hour", which generated traces do not use."""
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


def mentions(text: str, name: Any) -> bool:
    """True when `text` contains `name` in any form `variants` accepts, as whole words ("cup" is not in
    "cupboard"); compared after `normalize`, so case, punctuation and hyphens do not hide it."""
    words = f" {normalize(text)} "
    return any(f" {form} " in words for form in variants(name))
