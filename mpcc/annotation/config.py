"""Annotation settings, free of heavy imports so the CLI can show their defaults quickly."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from mpcc.errors import ConfigError
from mpcc.generation.decoding import Decoding
from mpcc.generation.endpoint import EndpointConfig
from mpcc.options import option

MODES = ("guided", "blind")
BLIND_TRIES = 4  # default samples per row in blind mode (rejection sampling); guided asks once


@dataclass(frozen=True)
class AnnotateConfig:
    """What is asked and what is kept."""

    options_group: ClassVar[str] = "traces"

    mode: str = option(
        "guided",
        "guided: the teacher is told the answer; blind: the student's prompt only, wrong answers rejected",
        choices=MODES,
    )
    tries: int | None = option(
        None,
        f"answers asked per row at most, until one passes (default: 1 guided, {BLIND_TRIES} blind)",
        minimum=1,
    )
    seed: int = option(0, "sampling seed", minimum=0)
    min_words: int | None = option(None, "reject traces shorter than this many words", minimum=0)
    max_words: int | None = option(None, "reject traces longer than this many words", minimum=1)
    limit: int | None = option(None, "only the first N rows (the output holds only them)", minimum=1)
    max_answer_chars: int = option(
        32_000,
        "an answer longer than this many characters is a teacher error, never saved (an endpoint's "
        "response is not read past the size this allows)",
        minimum=1,
    )

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.tries is None:  # the mode's default, resolved once here
            object.__setattr__(self, "tries", BLIND_TRIES if self.mode == "blind" else 1)
        if self.tries < 1 or (self.limit is not None and self.limit < 1):
            raise ConfigError(f"tries and limit must be >= 1, got {self.tries} and {self.limit}")
        if self.max_answer_chars < 1:
            raise ConfigError(f"max_answer_chars must be >= 1, got {self.max_answer_chars}")


@dataclass(frozen=True)
class TeacherConfig:
    """Who writes the traces: a local model or an OpenAI-compatible endpoint, and how it samples."""

    options_group: ClassVar[str] = "teacher"

    teacher: str | None = option(
        None,
        "a model path, hub name or tiny:<arch> (run here), or an endpoint's base URL "
        "http(s)://HOST[:PORT]/v1 (default: $MPCC_TEACHER_BASE_URL or $OPENAI_BASE_URL); the API key comes "
        "from $MPCC_TEACHER_API_KEY or $OPENAI_API_KEY",
    )
    teacher_model: str | None = option(
        None, "the endpoint's model name (default: $MPCC_TEACHER_MODEL, else the server's only model)"
    )
    # The authors' sampling settings; a teacher's traces are longer than the student's answers.
    max_new_tokens: int = option(512, "new tokens per answer at most", minimum=1)
    temperature: float = option(0.7, "0 = greedy", minimum=0)
    top_p: float = option(0.9, "nucleus sampling", above=0, maximum=1)
    batch_size: int = option(8, "local teacher: rows per generate call", minimum=1)
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)

    @property
    def spec(self) -> str:
        spec = self.teacher or os.environ.get("MPCC_TEACHER_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        if not spec:
            raise ConfigError("--teacher is required (or set MPCC_TEACHER_BASE_URL)")
        return spec

    @property
    def model(self) -> str | None:
        return self.teacher_model or os.environ.get("MPCC_TEACHER_MODEL")

    @property
    def decoding(self) -> Decoding:
        return Decoding(self.max_new_tokens, self.temperature > 0, self.temperature, self.top_p)


@dataclass(frozen=True)
class AnnotateJob:
    """`mpcc annotate DATASET --teacher MODEL_OR_URL --out DIR` or `mpcc annotate import FILE --data DATASET
    --out DIR`: the dataset (or the traces file), and where the annotated build goes."""

    target: tuple[str, ...] = option(
        help="an `mpcc prepare train` build to annotate, or `import FILE` (JSON list or JSONL of traces)",
        positional=True,
        metavar="DATASET | import FILE",
    )
    out: Path = option(help="output dataset directory (written atomically)")
    overwrite: bool = option(False, "replace a previous mpcc output at --out (never other files)")
    work_dir: Path | None = option(None, "progress log for resuming (default: the output path + .annotate)")
    data: Path | None = option(None, "with `import`: the train build the traces belong to")


def check_sampling(config: AnnotateConfig, decoding: Decoding) -> None:
    """Several tries of one prompt only differ when sampled."""
    if config.tries > 1 and not decoding.do_sample:
        raise ConfigError(f"{config.tries} tries need sampling (temperature > 0): greedy answers repeat")
