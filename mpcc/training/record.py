"""The run record (mpcc.records.TrainingRun): a run's resolved settings, written into its output_dir at
start.

Checkpoints (`output_dir/checkpoint-N`) sit beside it, so `mpcc export` can describe any of them
(trainer kind, hyperparameters, rewards, prior sampling, LoRA, the data build) without the recipe.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import mpcc
from mpcc.records import BUILD_FILE, RunDataset, TrainingRun, json_values, read_build, read_training_run
from mpcc.training.data import resolve_dataset


def run_record(run, train_args, model_args) -> TrainingRun:
    """The settings as JSON values. `train_args.to_dict()` is transformers' own dump: it masks every
    *_token."""
    dataset = resolve_dataset(run.dataset_path)
    return TrainingRun(
        mpcc_version=mpcc.__version__,
        checkpoint_marker=True,  # its checkpoints are complete only once marked (mpcc.training.output_dir)
        run=json_values(asdict(run)),
        trainer=json_values(train_args.to_dict()),
        model=json_values(asdict(model_args)),
        dataset=RunDataset(
            path=str(dataset), build=read_build(dataset) if (dataset / BUILD_FILE).is_file() else None
        ),
    )


def checkpoint_run(checkpoint: str | Path) -> TrainingRun | None:
    """The record of the run that wrote `checkpoint`: in it (a final output_dir) or its parent
    (`checkpoint-N`); None when the run predates the record."""
    return read_training_run(checkpoint) or read_training_run(Path(checkpoint).parent)
