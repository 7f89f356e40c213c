"""Evaluation settings, kept free of heavy imports so the CLI can show their defaults quickly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mpcc.data.answer_options import FORMATS
from mpcc.errors import ConfigError
from mpcc.generation.decoding import Decoding
from mpcc.options import option, validate_bounds

EVAL_FORMATS = (*FORMATS, "open")
IMAGE_DIAGNOSTICS = ("blind", "context", "shape")  # the same questions on a changed image
STEP_DIAGNOSTICS = ("crm", "evidence")  # inside the greedy reasoning, step by step
DIAGNOSTICS = (*IMAGE_DIAGNOSTICS, *STEP_DIAGNOSTICS)
BACKENDS = ("hf", "vllm")


def parse_layers(text: str) -> tuple[int, ...]:
    """`0,-1` -> (0, -1): layer indices, checked against the model when it is loaded."""
    try:
        return tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError as e:
        raise ConfigError(f"attention layers must be comma-separated integers, got {text!r}") from e


@dataclass(frozen=True)
class EvalConfig:
    formats: tuple[str, ...] = option(FORMATS, f"comma-separated of {', '.join(EVAL_FORMATS)}")
    samples: int = option(
        1,
        "samples per row; > 1 samples (temperature/top-p) and reports mean accuracy with a 95% bootstrap "
        "interval (1: greedy)",
        minimum=1,
    )
    seed: int = option(0, "sampling seed", minimum=0)
    batch_size: int = option(16, "rows per generate call", minimum=1)
    decoding: Decoding = field(default_factory=Decoding)
    limit: int | None = option(None, "only the first N items (all their rows), for quick looks", minimum=1)
    diagnostics: tuple[str, ...] = option(
        (),
        "comma-separated of blind (image blanked), context (the k most predictive context objects hidden "
        "too), shape (only the hidden region's silhouette); crm (contrastive region masking of each "
        "reasoning step), evidence (attention on the context objects during the reasoning, entropy, "
        "the vision veto)",
    )
    context_k: int = option(
        2, "context objects the `context` diagnostic hides (and CRM's joint set)", minimum=1
    )
    crm_regions: int = option(
        3, "CRM: context objects hidden one at a time, most predictive first", minimum=0
    )
    attention_layers: tuple[int, ...] | None = option(
        None,
        "evidence: comma-separated text-layer indices measured (negative: from the last); all when unset",
        parse=parse_layers,
    )
    monitor_task: str = option(
        "format",
        "evidence: the answers' field (format, difficulty, category, in_distribution, ...) or eval-data "
        "column whose values are the uncertainty monitor's tasks: the entropy x vision model is fitted per "
        "task and the vision veto targets the tasks where confident-but-blind answers are hazardous",
    )
    reuse_images: bool = option(
        True,
        "encode each image once for all the rows of its item and the diagnostics' passes over it (hf); "
        "vllm: its prefix cache prefills a shared system prompt + image once. Same predictions.",
    )
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
        validate_bounds(self)
        if set(self.diagnostics) & set(STEP_DIAGNOSTICS) and (self.samples > 1 or self.decoding.do_sample):
            raise ConfigError(
                f"{'/'.join(STEP_DIAGNOSTICS)} measure the greedy reasoning: use samples 1 without do_sample"
            )


@dataclass(frozen=True, kw_only=True)
class EvalJob:
    """`mpcc eval`: what to evaluate and where the report goes (or `mpcc eval compare RUN ...`)."""

    runs: tuple[str, ...] = option(
        (), "with `compare`: the eval output directories to compare", positional=True
    )
    model: str | None = option(None, "model path or hub name (or tiny:<arch>)")
    data: Path | None = option(None, "an `mpcc prepare eval` build")
    out: Path = option(help="output directory")
    overwrite: bool = option(
        False,
        "start over: replace a previous eval run (or comparison) in --out, never other files (else only "
        "the same run resumes)",
    )
