"""A training output_dir belongs to one run, and its checkpoints are complete or ignored.

* One writer: the run holds the output lock (mpcc.outputs) from its start to its end; a second run into
  the same output_dir fails at its start naming the holder.
* One run: a used output_dir (not empty) is accepted only when its run record (mpcc_run.json) has the
  same settings as this run, less those that do not change what is trained (`IGNORED`); training then
  goes on from its newest complete checkpoint, as a requeued job does. Another run's folder is refused,
  unless `overwrite_output_dir` (which replaces only an mpcc training output, never a folder of other
  files).
* Complete checkpoints: the Trainer writes `checkpoint-N` from every rank (weights, DeepSpeed shards,
  optimizer, per-rank RNG states, then trainer_state.json); once every rank is done, the main process
  adds `COMPLETE` to it. A kill or a full disk during the save leaves the folder without it, and resume
  (`auto`, `last`) passes over it with a warning. Checkpoints of runs from before the marker count as
  complete when they hold trainer_state.json.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

from mpcc.errors import InputError
from mpcc.inputs import read_json
from mpcc.outputs.checks import OutputExistsError
from mpcc.outputs.locks import lock_output
from mpcc.outputs.modes import set_modes
from mpcc.outputs.overlap import check_inputs
from mpcc.records import TrainingRun, read_training_run
from mpcc.training.curves import STATE_FILE
from mpcc.training.resume import ADAPTER, WEIGHTS

logger = logging.getLogger(__name__)

COMPLETE = ".mpcc-complete"
CHECKPOINT = re.compile(r"checkpoint-(\d+)")
# Settings that name where or how a run is continued, not what it trains (keys of the flattened record).
IGNORED = frozenset(
    {
        "mpcc_version",
        "checkpoint_marker",
        "trainer.output_dir",
        "trainer.resume_from_checkpoint",
        "trainer.logging_dir",
        "run.overwrite_output_dir",
    }
)


def _settings(record: dict, prefix: str = "") -> dict:
    """The record as {dotted key: value}, less the IGNORED keys."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_settings(value, f"{prefix}{key}."))
        elif f"{prefix}{key}" not in IGNORED:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(old: TrainingRun, new: TrainingRun) -> list[str]:
    """`key: old -> new` for each setting that differs between two run records."""
    a, b = _settings(old.to_json()), _settings(new.to_json())
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, oldest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := CHECKPOINT.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _marks_checkpoints(output_dir: Path) -> bool:
    """Whether the run in `output_dir` marks its complete checkpoints (runs from before the marker do not)."""
    record = read_training_run(output_dir)
    return record is not None and record.checkpoint_marker


def is_complete(checkpoint: Path, marked: bool | None = None) -> bool:
    """Marked complete; or, in a run from before the marker (`marked`: read from its record when None),
    holding its trainer_state.json."""
    if (checkpoint / COMPLETE).is_file():
        return True
    if marked is None:
        marked = _marks_checkpoints(checkpoint.parent)
    return not marked and (checkpoint / STATE_FILE).is_file()


def trained_steps(folder: str | Path) -> int | None:
    """The global step a checkpoint (or a finished output_dir) recorded in its trainer_state.json."""
    state = Path(folder) / STATE_FILE
    return int(read_json(state).get("global_step", 0)) if state.is_file() else None


def has_steps_left(output_dir: str | Path, checkpoint: str, max_steps: int) -> bool:
    """Whether training from `checkpoint` has steps left before `max_steps`. transformers checks the
    limit only after a step, so resuming a checkpoint at max_steps would train one step past it: when
    none is left, the run's final model must be in output_dir already (else InputError, saying how to
    get it)."""
    done = trained_steps(checkpoint) or 0
    if max_steps <= 0 or done < max_steps:
        return True
    out = Path(output_dir)
    weights = any((out / name).is_file() for name in (WEIGHTS, ADAPTER))
    if not (weights and (trained_steps(out) or 0) >= done):
        raise InputError(
            f"{checkpoint} already reached max_steps {max_steps}, but {out} holds no final model (the run "
            f"stopped while saving it): export the checkpoint (`mpcc export {checkpoint}`), or raise "
            "max_steps to train on"
        )
    return False


def newest_complete(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint; newer incomplete ones are named in a warning and passed over."""
    marked = _marks_checkpoints(Path(output_dir))
    for checkpoint in reversed(checkpoints(output_dir)):
        if is_complete(checkpoint, marked):
            return checkpoint
        logger.warning("%s is incomplete (a save that did not finish): not resuming from it", checkpoint)
    return None


def claim(output_dir: str | Path, record: TrainingRun, overwrite: bool, main_process: bool, inputs=()):
    """Take `output_dir` for the run described by `record`: returns the output lock (hold it while
    training; None on other ranks) and whether the folder holds this same run already. Refuses a used
    folder of another run unless `overwrite`, any folder of other files, and one that is, holds or lies
    in one of `inputs`."""
    out = Path(output_dir)
    check_inputs(out, inputs, OutputExistsError)
    lock = lock_output(out) if main_process else None
    used = out.is_dir() and any(out.iterdir())
    previous = read_training_run(out) if used else None
    if used and previous is None:
        names = ", ".join(sorted(os.listdir(out))[:5])
        raise OutputExistsError(
            f"output_dir {out} holds files of no mpcc training run ({names}): choose another output_dir"
        )
    same = False
    if previous is not None:
        changed = differences(previous, record)
        if not changed:
            same = True
        elif not overwrite:
            shown = "; ".join(changed[:3]) + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "")
            raise OutputExistsError(
                f"output_dir {out} holds another run ({shown}): resume it with its own settings, choose "
                "another output_dir, or set overwrite_output_dir: true to replace it"
            )
        elif main_process:
            logger.warning("overwrite_output_dir: replacing the run in %s", out)
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    return lock, same


def resume_point(output_dir: str | Path, same_run: bool) -> Path | None:
    """What to resume from when the recipe did not say: the same run's newest complete checkpoint."""
    if not same_run:
        return None
    newest = newest_complete(output_dir)
    if newest is not None:
        logger.info("output_dir holds this run: going on from %s", newest)
    return newest


class CompleteCheckpoints(TrainerCallback):
    """After each save (every rank has written its part), the main process marks the checkpoint complete
    and gives its files the modes the user's umask asks for (safetensors writes them 0600)."""

    def on_save(self, args, state, control, **kwargs):
        from accelerate import PartialState

        PartialState().wait_for_everyone()
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not checkpoint.is_dir():
                raise InputError(f"{checkpoint}: the Trainer reported a save but wrote no such folder")
            set_modes(checkpoint)
            (checkpoint / COMPLETE).write_text("")
        return control
