"""Evaluation settings, kept free of heavy imports so the CLI can show their defaults quickly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from mpcc.data.answer_options import OPTION_FORMATS
from mpcc.errors import ConfigError
from mpcc.generation.decoding import Decoding
from mpcc.options import option, validate_bounds

EVAL_FORMATS = (*OPTION_FORMATS, "open")
IMAGE_DIAGNOSTICS = ("blind", "context", "shape")  # the same questions on a changed image
STEP_DIAGNOSTICS = ("crm", "evidence", "entropy")  # measured on the greedy answers
DIAGNOSTICS = (*IMAGE_DIAGNOSTICS, *STEP_DIAGNOSTICS)
BACKENDS = ("hf", "vllm")
BOX_FORMATS = ("xyxy", "xywh")  # evidence boxes of other datasets
CRM_FILLS = ("surround", "target")  # what covers an ablated region (mpcc.evaluation.grounding.conditions)


def parse_layers(text: str) -> tuple[int, ...]:
    """`0,-1` -> (0, -1): layer indices, checked against the model when it is loaded."""
    try:
        return tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError as e:
        raise ConfigError(f"attention layers must be comma-separated integers, got {text!r}") from e


@dataclass(frozen=True)
class DatasetColumns:
    """Where `mpcc eval` finds each field of a dataset that is not an mpcc build (mpcc.evaluation.external).
    A YAML file of these keys, given as `--config`, is the mapping file."""

    options_group: ClassVar[str] = "other datasets (not mpcc builds)"

    image_column: str = option(
        "image", "the image: a file path (relative to the JSONL file or saved dataset) or an image feature"
    )
    question_column: str = option("question", "the question asked")
    answer_column: str = option(
        "answer", "the right answer: free text, yes/no, or with choices the right choice's text or letter"
    )
    choices_column: str = option("choices", "a multiple-choice row's options (a list; empty: free text)")
    evidence_column: str = option(
        "evidence", "evidence regions in pixels: boxes, polygons or COCO RLE (one region or a list)"
    )
    box_format: str = option(
        "xyxy", "evidence boxes: x0,y0,x1,y1 or COCO's x,y,width,height", choices=BOX_FORMATS
    )
    id_column: str | None = option(None, "a unique item id (default: the row number, from 1)")
    subset_column: str | None = option(
        None, "reported per subset (metrics' per_supercategory), e.g. a task or category column"
    )
    split: str | None = option(None, "the split of a saved DatasetDict that has several")


@dataclass(frozen=True)
class EvalConfig:
    formats: tuple[str, ...] = option(OPTION_FORMATS, f"comma-separated of {', '.join(EVAL_FORMATS)}")
    samples: int = option(
        1,
        "samples per row; > 1 samples (temperature/top-p) and reports mean accuracy with a 95% bootstrap "
        "interval (1: greedy)",
        minimum=1,
    )
    seed: int = option(0, "sampling seed", minimum=0)
    batch_size: int = option(16, "rows per generate call", minimum=1)
    decoding: Decoding = field(default_factory=Decoding)
    columns: DatasetColumns = field(default_factory=DatasetColumns)
    limit: int | None = option(None, "only the first N items (all their rows), for quick looks", minimum=1)
    diagnostics: tuple[str, ...] = option(
        (),
        "comma-separated of blind (image blanked), context (the k most predictive context objects hidden "
        "too), shape (only the hidden region's silhouette); crm (contrastive region masking of each "
        "reasoning step), evidence (attention on the context objects during the reasoning, entropy, "
        "the vision veto), entropy (each answer's token entropy and how well it ranks wrong answers; "
        "from a served model's token log-probs too)",
    )
    context_k: int = option(
        2, "context objects the `context` diagnostic hides (and CRM's joint set)", minimum=1
    )
    crm_regions: int = option(
        3,
        "CRM: context objects hidden one at a time, most predictive first (each region set also gets a "
        "control ablation of the same area elsewhere: two generations per set)",
        minimum=0,
    )
    crm_fill: str = option(
        "surround",
        "CRM: what covers a hidden object; surround: the mean colour of the pixels around it (not the "
        "target's fill, so the image shows one masked object); target: the build's fill, as the target's",
        choices=CRM_FILLS,
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
        "preprocess and encode each image once for all the rows of its item and the diagnostics' passes "
        "over it (hf); vllm: its prefix cache prefills a shared system prompt + image once. "
        "Same predictions.",
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
        if self.crm_fill not in CRM_FILLS:
            raise ConfigError(f"crm fill must be one of {CRM_FILLS}, got {self.crm_fill!r}")
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
    model: str | None = option(
        None, "model path or hub name (or tiny:<arch>), or openai:NAME: the model NAME served at --endpoint"
    )
    endpoint: str | None = option(
        None,
        "with --model openai:NAME: the OpenAI-compatible server's base URL http(s)://HOST[:PORT]/v1 "
        "(default: $OPENAI_BASE_URL); the API key comes from $OPENAI_API_KEY and is never written",
    )
    data: Path | None = option(
        None,
        "an `mpcc prepare eval` build, or another dataset: saved with save_to_disk, or a JSONL file beside "
        "its images (see the `other datasets` options)",
    )
    out: Path = option(help="output directory")
    overwrite: bool = option(
        False,
        "start over: replace a previous eval run (or comparison) in --out, never other files (else only "
        "the same run resumes)",
    )
