"""The model families mpcc supports, keyed by transformers `model_type` (see `base.Family`).

`family(model_type)` is the one place that says whether a model is supported: anything else is
refused at start with the family named and the supported ones listed.
"""

from __future__ import annotations

import logging

from mpcc.errors import ConfigError
from mpcc.families import gemma3, glm, idefics3, internvl, llava_onevision, qwen
from mpcc.families.base import WHOLE_IMAGE, Family, Grid

logger = logging.getLogger(__name__)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        *qwen.FAMILIES,
        *idefics3.FAMILIES,
        gemma3.FAMILY,
        *glm.FAMILIES,
        llava_onevision.FAMILY,
        internvl.FAMILY,
    )
}
TINY_ARCHS = tuple(FAMILIES)
_BY_MODEL_TYPE = {t: f for f in FAMILIES.values() for t in f.model_types}
# A processor saved without its model names only its stock class: map the name back.
_BY_PROCESSOR_NAME = {f.processor.__name__: f for f in FAMILIES.values()}


def family(model_type: str) -> Family:
    """The family of a config's `model_type`; a one-line ConfigError naming the supported ones otherwise."""
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise ConfigError(
            f"model type {model_type!r} is not a supported model family; "
            f"supported: {', '.join(sorted(_BY_MODEL_TYPE))}"
        ) from None


def family_of_processor(class_name: str | None) -> Family | None:
    """The family whose (stock) processor class is `class_name`, or None."""
    return _BY_PROCESSOR_NAME.get(class_name)


def use_speedup(model_type: str, speedup: str, wanted: bool) -> bool:
    """Whether to use `speedup` (a Family flag: image_feature_memo, shared_prefill): wanted and the family
    has the API it needs. Wanted where it has not is said in one line at start; the run goes on without it
    (slower, the same numbers)."""
    available = getattr(family(model_type), speedup)
    if wanted and not available:
        logger.warning(
            "%s: not available for %s models (mpcc.families); running without it",
            speedup,
            model_type,
        )
    return wanted and available


__all__ = [
    "FAMILIES",
    "TINY_ARCHS",
    "WHOLE_IMAGE",
    "Family",
    "Grid",
    "family",
    "family_of_processor",
    "use_speedup",
]
