"""Annotation settings, free of heavy imports so the CLI can show their defaults quickly."""

from __future__ import annotations

from dataclasses import dataclass

from mpcc.evaluation.config import Decoding

MODES = ("guided", "blind")
BLIND_TRIES = 4  # default samples per row in blind mode (rejection sampling); guided asks once
# The authors' sampling settings; a teacher's traces are longer than the student's answers.
TEACHER_DECODING = Decoding(max_new_tokens=512, do_sample=True, temperature=0.7, top_p=0.9)


@dataclass(frozen=True)
class AnnotateConfig:
    mode: str = "guided"  # guided: the teacher is told the answer; blind: the student's prompt only
    tries: int = 1  # answers asked per row at most; the first verified one is kept
    seed: int = 0
    min_words: int | None = None  # bounds on the trace's length, in words
    max_words: int | None = None
    limit: int | None = None  # only the first N rows (the output holds only them)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.tries < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError(f"tries and limit must be >= 1, got {self.tries} and {self.limit}")


def check_sampling(config: AnnotateConfig, decoding: Decoding) -> None:
    """Several tries of one prompt only differ when sampled."""
    if config.tries > 1 and not decoding.do_sample:
        raise ValueError(f"{config.tries} tries need sampling (temperature > 0): greedy answers repeat")
