"""The run record: a run's resolved settings, written as `mpcc_run.json` into its output_dir at start.

Checkpoints (`output_dir/checkpoint-N`) sit beside it, so `mpcc export` can describe any of them
(trainer kind, hyperparameters, rewards, prior sampling, LoRA, the data build) without the recipe.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import mpcc
from mpcc.data.render import BUILD_FILE, build_record
from mpcc.errors import InputError
from mpcc.inputs import read_json
from mpcc.outputs.writing import write_text_atomic
from mpcc.training.data import resolve_dataset

RUN_FILE = "mpcc_run.json"


def run_record(run, train_args, model_args) -> dict:
    """The settings as JSON values. `train_args.to_dict()` is transformers' own dump: it masks every
    *_token."""
    dataset = resolve_dataset(run.dataset_path)
    record = {
        "mpcc_version": mpcc.__version__,
        "checkpoint_marker": True,  # its checkpoints are complete only once marked (mpcc.training.output_dir)
        "run": asdict(run),
        "trainer": train_args.to_dict(),
        "model": asdict(model_args),
        "dataset": {
            "path": str(dataset),
            "build": build_record(dataset) if (dataset / BUILD_FILE).is_file() else None,
        },
    }
    return json.loads(json.dumps(record, default=str))  # as read back from the file


def save_run_record(output_dir: str | Path, record: dict) -> Path:
    """Write `output_dir/mpcc_run.json` (call on the main process only)."""
    path = Path(output_dir) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def load_run_record(checkpoint: str | Path) -> dict | None:
    """The record of the run that wrote `checkpoint`: in it (a final output_dir) or its parent
    (`checkpoint-N`); None when the run predates the record."""
    for folder in (Path(checkpoint), Path(checkpoint).parent):
        file = folder / RUN_FILE
        if file.is_file():
            try:
                return read_json(file)
            except ValueError as e:
                raise InputError(f"{file}: not a readable run record ({e})") from e
    return None
