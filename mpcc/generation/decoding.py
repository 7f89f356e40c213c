"""How answers are decoded, one set of options for evaluation, annotation and export's sample; light to
import, so the CLI shows its defaults without loading torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mpcc.options import option


@dataclass(frozen=True)
class Decoding:
    """Greedy unless `do_sample`; the authors sampled with temperature 0.7, top-p 0.9, 512 tokens."""

    options_group: ClassVar[str] = "decoding"

    max_new_tokens: int = option(256, "new tokens per answer at most", minimum=1)
    do_sample: bool = False
    temperature: float = option(0.7, "when sampling", above=0)
    top_p: float = option(0.9, "when sampling", above=0, maximum=1)
