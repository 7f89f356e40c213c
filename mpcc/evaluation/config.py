"""Evaluation settings, kept free of heavy imports so the CLI can show their defaults quickly."""

from __future__ import annotations

from dataclasses import dataclass, field

EVAL_FORMATS = ("mc4", "mc7", "yesno", "open")
DIAGNOSTICS = ("blind", "context", "shape")
BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class Decoding:
    """Greedy unless `do_sample`; the authors sampled with temperature 0.7, top-p 0.9, 512 tokens."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9


@dataclass(frozen=True)
class EvalConfig:
    formats: tuple[str, ...] = ("mc4", "mc7", "yesno")
    samples: int = 1  # > 1: sampled decoding, mean and 95% bootstrap interval over samples
    seed: int = 0
    batch_size: int = 16
    decoding: Decoding = field(default_factory=Decoding)
    limit: int | None = None  # first N items (all their rows), for quick looks
    diagnostics: tuple[str, ...] = ()  # blind / context / shape (mpcc.evaluation.diagnostics)
    context_k: int = 2  # context objects hidden by the `context` diagnostic
    backend: str = "hf"  # hf (transformers generate) or vllm (when installed)

    def __post_init__(self):
        unknown = set(self.formats) - set(EVAL_FORMATS)
        if unknown or not self.formats:
            raise ValueError(f"formats must be a non-empty subset of {EVAL_FORMATS}, got {self.formats}")
        if set(self.diagnostics) - set(DIAGNOSTICS):
            raise ValueError(f"diagnostics must be a subset of {DIAGNOSTICS}, got {self.diagnostics}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.samples < 1 or self.batch_size < 1:
            raise ValueError("samples and batch_size must be >= 1")
