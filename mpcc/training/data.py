"""Training data: an `mpcc prepare train` build, or a cached synthetic one, shaped for each trainer."""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset

from mpcc import cache_dir
from mpcc.data.build import BuildConfig, build
from mpcc.data.render import load_dataset
from mpcc.data.synthetic import generate_scenes
from mpcc.errors import ConfigError, InputError
from mpcc.records import BUILD_FILE, read_build
from mpcc.rewards import target_answer, trace_completion

logger = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "synthetic:"
SYNTHETIC_SIZES = {"demo": 240, "tiny": 60}  # scenes per named synthetic train set


def resolve_dataset(spec: str) -> Path:
    """A build directory; `synthetic:<name>` is drawn and built once, then reused from the cache."""
    if not spec.startswith(SYNTHETIC_PREFIX):
        return Path(spec)
    name = spec[len(SYNTHETIC_PREFIX) :]
    if name not in SYNTHETIC_SIZES:
        raise ConfigError(f"unknown synthetic dataset {name!r}; choose from {sorted(SYNTHETIC_SIZES)}")
    root = cache_dir() / "data" / name
    train = root / "train"
    if not train.is_dir():
        scenes = root / "scenes"
        if not (scenes / "instances.json").is_file():
            generate_scenes(scenes, num_images=SYNTHETIC_SIZES[name], seed=0)
        logger.info("building the synthetic train set %s (once; cached at %s)", name, train)
        build(
            scenes / "instances.json",
            scenes / "images",
            train,
            BuildConfig("train", template_traces=True),
            overwrite=True,
        )
    return train


def check_training_data(spec: str, allow_eval: bool = False) -> None:
    """Refuse an `mpcc prepare eval` build as training data (its build record says so) unless allowed:
    training on the benchmark would make its scores meaningless. Reads only the record: call it before
    anything heavy."""
    if spec.startswith(SYNTHETIC_PREFIX):
        return  # train builds
    try:
        split = read_build(spec).split  # a folder without a record is no build
    except InputError as e:
        raise InputError(f"dataset_path: {e}") from e
    if split == "eval" and not allow_eval:
        raise ConfigError(
            f"dataset_path {spec} is an eval build (its {BUILD_FILE} says split: eval), not training data; "
            "set allow_eval_data: true to train on it anyway"
        )


REQUIRED = ("image", "prompt", "solution")


def load_train_dataset(
    spec: str, kind: str, max_samples: int | None = None, allow_eval: bool = False
) -> Dataset:
    """Rows for `kind` (sft, grpo, grpo_prior), with a clear error when a needed column is missing; an
    eval build only with `allow_eval` (check_training_data)."""
    check_training_data(spec, allow_eval)
    path = resolve_dataset(spec)
    dataset = load_dataset(path)
    needed = REQUIRED + (("reasoning",) if kind in ("sft", "grpo_prior") else ())
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        raise InputError(f"{path}: the {kind} trainer needs columns {missing}, which this dataset lacks")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if kind == "grpo_prior" and not any(dataset["reasoning"]):
        raise InputError(
            f"{path}: prior sampling needs reasoning traces, but every `reasoning` is empty "
            "(build with --template-traces or annotate with a teacher)"
        )
    if kind == "sft":
        return _sft_rows(dataset, path)
    return dataset


def _sft_rows(dataset: Dataset, path: Path) -> Dataset:
    """prompt/completion rows (TRL puts the loss on the completion only); rows without a trace are dropped."""
    dataset = dataset.filter(lambda r: bool(r), input_columns="reasoning")
    if len(dataset) == 0:
        raise InputError(f"{path}: SFT needs rows with a `reasoning` trace; this dataset has none")
    keep = ["image", "prompt", "completion"]

    def to_sft(row: dict) -> dict:
        text = trace_completion(row["reasoning"], target_answer(row))
        return {"completion": [{"role": "assistant", "content": [{"type": "text", "text": text}]}]}

    dataset = dataset.map(to_sft)
    return dataset.select_columns(keep)
