"""Evaluation settings, kept free of heavy imports so the CLI can show their defaults quickly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from mpcc.data.options import FORMATS
from mpcc.errors import ConfigError
from mpcc.options import option

EVAL_FORMATS = (*FORMATS, "open")
DIAGNOSTICS = ("blind", "context", "shape")
BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class Decoding:
    """Greedy unless `do_sample`; the authors sampled with temperature 0.7, top-p 0.9, 512 tokens."""

    options_group: ClassVar[str] = "decoding"

    max_new_tokens: int = option(256, "new tokens per answer at most")
    do_sample: bool = False
    temperature: float = option(0.7, "when sampling")
    top_p: float = option(0.9, "when sampling")


@dataclass(frozen=True)
class EvalConfig:
    formats: tuple[str, ...] = option(FORMATS, f"comma-separated of {', '.join(EVAL_FORMATS)}")
    samples: int = option(
        1,
        "samples per row; > 1 samples (temperature/top-p) and reports mean accuracy with a 95% bootstrap "
        "interval (1: greedy)",
    )
    seed: int = option(0, "sampling seed")
    batch_size: int = option(16, "rows per generate call")
    decoding: Decoding = field(default_factory=Decoding)
    limit: int | None = option(None, "only the first N items (all their rows), for quick looks")
    diagnostics: tuple[str, ...] = option(
        (),
        "comma-separated of blind (image blanked), context (the k most predictive context objects hidden "
        "too), shape (only the hidden region's silhouette)",
    )
    context_k: int = option(2, "context objects the `context` diagnostic hides")
    backend: str = option(
        "hf",
        "hf: transformers generate, batched; vllm: vLLM's offline engine, when installed",
        choices=BACKENDS,
    )

    def __post_init__(self):
        unknown = set(self.formats) - set(EVAL_FORMATS)
        if unknown or not self.formats:
            raise ConfigError(f"formats must be a non-empty subset of {EVAL_FORMATS}, got {self.formats}")
        if set(self.diagnostics) - set(DIAGNOSTICS):
            raise ConfigError(f"diagnostics must be a subset of {DIAGNOSTICS}, got {self.diagnostics}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.samples < 1 or self.batch_size < 1:
            raise ConfigError("samples and batch_size must be >= 1")


@dataclass(frozen=True, kw_only=True)
class EvalJob:
    """`mpcc eval`: what to evaluate and where the report goes (or `mpcc eval compare RUN ...`)."""

    runs: tuple[str, ...] = option(
        (), "with `compare`: the eval output directories to compare", positional=True
    )
    model: str | None = option(None, "model path or hub name (or tiny:<arch>)")
    data: Path | None = option(None, "an `mpcc prepare eval` build")
    out: Path = option(help="output directory")
