"""A training output_dir belongs to one run (mpcc.training.output_dir): one writer at a time, another run's
folder refused unless overwrite_output_dir, the same run's folder resumed, incomplete checkpoints passed
over; training leaves its input build untouched and writes files with the user's umask modes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mpcc.train
from mpcc.errors import InputError
from mpcc.outputs.checks import OutputExistsError
from mpcc.outputs.locks import OutputBusyError
from mpcc.training.config import load_recipe
from mpcc.training.curves import log_history
from mpcc.training.data import resolve_dataset
from mpcc.training.output_dir import COMPLETE
from mpcc.training.record import run_record

SFT = str(Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "sft.yaml")


class Built(Exception):
    """build_trainer was reached: every check before it passed."""


@pytest.fixture
def no_trainer(monkeypatch):
    def refuse(*args, **kwargs):
        raise Built

    monkeypatch.setattr(mpcc.train, "build_trainer", refuse)


BUILD: Path  # this module's copy of the synthetic train build and its files' bytes (set by `finished`)
BUILD_FILES: dict[str, bytes]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _train(out: Path, *options: str) -> int:
    common = ["--dataset_path", str(BUILD), "--max_steps", "2", "--save_steps", "1"]
    return mpcc.train.main([SFT, "--output_dir", str(out), *common, *options])


@pytest.fixture(scope="module", autouse=True)
def finished(tmp_path_factory) -> Path:
    """A finished 2-step SFT run with checkpoints 1 and 2 (copied by the tests that change it), trained on
    a copy of the synthetic build that nothing else reads."""
    global BUILD, BUILD_FILES
    BUILD = tmp_path_factory.mktemp("build") / "train"
    shutil.copytree(resolve_dataset("synthetic:tiny"), BUILD)
    BUILD_FILES = _files(BUILD)
    out = tmp_path_factory.mktemp("finished") / "run"
    assert _train(out) == 0
    return out


def _copy(run: Path, to: Path) -> Path:
    subprocess.run(["cp", "-a", str(run), str(to)], check=True)
    return to


def test_a_second_writer_fails_at_its_start(tmp_path, no_trainer):
    out = tmp_path / "run"
    holder = textwrap.dedent(
        f"""
        import sys, time
        from mpcc.outputs.locks import lock_output
        lock = lock_output({str(out)!r})
        print("held", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(
            OutputBusyError, match=rf"{out} is being written by another mpcc process \(pid {proc.pid}"
        ):
            _train(out)
    finally:
        proc.communicate("")
    with pytest.raises(Built):  # free again
        _train(out)


def test_another_runs_folder_is_refused_unless_overwritten(finished, tmp_path, no_trainer):
    out = _copy(finished, tmp_path / "run")
    with pytest.raises(
        OutputExistsError, match=r"holds another run \(trainer.learning_rate: 0.005 -> 0.001\)"
    ):
        _train(out, "--learning_rate", "1e-3")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    with pytest.raises(Built):
        _train(out, "--learning_rate", "1e-3", "--overwrite_output_dir", "true")
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()
    record = json.loads((out / "mpcc_run.json").read_text())
    assert record["trainer"]["learning_rate"] == 1e-3


def test_a_folder_of_other_files_is_refused_even_with_overwrite(tmp_path, no_trainer):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite_output_dir", "true"]):
        with pytest.raises(OutputExistsError, match=r"holds files of no mpcc training run \(notes.txt\)"):
            _train(out, *extra)
    assert (out / "notes.txt").read_text() == "mine"


def test_the_input_build_is_not_an_output_dir(no_trainer):
    inside = r"the output .*/run lies inside the input .*/train: choose an output"
    with pytest.raises(OutputExistsError, match=inside):
        _train(BUILD / "run")


def test_the_same_runs_folder_goes_on_from_its_newest_complete_checkpoint(finished, tmp_path, caplog):
    out = _copy(finished, tmp_path / "run")
    (out / "checkpoint-2" / COMPLETE).unlink()  # as a kill during that save leaves it
    (out / "model.safetensors").unlink()
    caplog.set_level(logging.INFO)
    assert _train(out) == 0
    assert "checkpoint-2 is incomplete (a save that did not finish): not resuming from it" in caplog.text
    assert f"output_dir holds this run: going on from {out / 'checkpoint-1'}" in caplog.text
    assert [h["step"] for h in log_history(out / "checkpoint-2") if "loss" in h] == [1, 2]
    assert (out / "checkpoint-2" / COMPLETE).is_file()  # saved again, whole this time


def test_an_incomplete_checkpoint_is_never_resumed(finished, tmp_path, no_trainer, caplog):
    out = _copy(finished, tmp_path / "run")
    for checkpoint in ("checkpoint-1", "checkpoint-2"):
        (out / checkpoint / COMPLETE).unlink()
    with pytest.raises(InputError, match="no complete checkpoint-N folder in output_dir"):
        _train(out, "--resume_from_checkpoint", "last")
    incomplete = r"checkpoint-2: an incomplete checkpoint \(its save did not finish\)"
    with pytest.raises(InputError, match=incomplete):
        _train(out, "--resume_from_checkpoint", str(out / "checkpoint-2"))
    caplog.clear()
    with pytest.raises(Built):  # auto: from scratch, with a warning per checkpoint passed over
        _train(out, "--resume_from_checkpoint", "auto")
    assert caplog.text.count("is incomplete (a save that did not finish)") == 2


def test_checkpoints_of_older_runs_count_when_they_hold_their_state(finished, tmp_path, no_trainer, caplog):
    """Runs from before the marker: a checkpoint with trainer_state.json is complete, one without is not."""
    out = _copy(finished, tmp_path / "run")
    record = json.loads((out / "mpcc_run.json").read_text())
    del record["checkpoint_marker"]
    (out / "mpcc_run.json").write_text(json.dumps(record))
    for checkpoint in ("checkpoint-1", "checkpoint-2"):
        (out / checkpoint / COMPLETE).unlink()
    (out / "checkpoint-2" / "trainer_state.json").unlink()
    caplog.set_level(logging.INFO)
    with pytest.raises(Built):
        _train(out, "--resume_from_checkpoint", "auto")
    assert f"resuming from {out / 'checkpoint-1'}" in caplog.text


def test_training_leaves_its_input_build_as_it_was(finished):
    """SFT filters and maps its rows: datasets' cache files go to a temporary folder, not the build."""
    assert _files(BUILD) == BUILD_FILES


def test_trained_files_have_the_umask_modes(finished):
    mask = os.umask(0o022)
    os.umask(mask)
    for path in (finished / "model.safetensors", finished / "checkpoint-2" / "model.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


def test_a_finished_run_trains_no_step_past_max_steps(finished, tmp_path, capsys):
    """transformers resumed at max_steps trains one more step: the same command again has nothing to do."""
    out = _copy(finished, tmp_path / "run")
    before = (out / "model.safetensors").read_bytes()
    for resume in ([], ["--resume_from_checkpoint", str(out / "checkpoint-2")]):
        assert _train(out, *resume) == 0
        assert f"nothing to train: {out} holds this run's final model" in capsys.readouterr().out
    assert not (out / "checkpoint-3").exists() and (out / "model.safetensors").read_bytes() == before
    (out / "model.safetensors").unlink()  # stopped while saving the final model: say how to get it
    with pytest.raises(InputError, match=r"checkpoint-2 already reached max_steps 2, but .* holds no final"):
        _train(out)


def test_the_record_written_at_start_holds_the_reward_weights(tmp_path):
    """mpcc_run.json is written before the trainer exists: the weights come from `rewards` at parse time
    (export's model card reads them)."""
    recipe = str(Path(SFT).with_name("grpo_prior.yaml"))
    record = run_record(*load_recipe(recipe, ["--output_dir", str(tmp_path), "--rewards", "paper"]))
    assert record.trainer["reward_weights"] == [1.0, 1.0]
    record = run_record(*load_recipe(recipe, ["--output_dir", str(tmp_path)]))
    assert record.trainer["reward_weights"] == [0.5, 1.0, 0.5]  # the default preset


def test_an_unwritable_output_dir_is_one_line(tmp_path, capsys):
    """An output_dir under a regular file (what a read-only folder is to root) fails at start, one line."""
    from mpcc.cli import main as cli_main

    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "run"
    assert cli_main(["train", SFT, "--output_dir", str(out), "--dataset_path", str(BUILD)]) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("mpcc train")]
    assert line.startswith("mpcc train: error: ") and str(tmp_path / "file") in line
