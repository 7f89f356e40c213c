"""mpcc.records: each record reads back to the bytes it was read from, a file that is not the record
says which file and what is wrong, and the module sits below every command."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from mpcc.errors import InputError
from mpcc.records import (
    BUILD_FILE,
    EVAL_RUN_FILE,
    TRAINING_RUN_FILE,
    EvalRun,
    RunDataset,
    TrainingRun,
    read_build,
    read_eval_run,
    read_training_run,
    write_build,
    write_eval_run,
    write_training_run,
)


def test_each_record_reads_back_to_the_same_bytes(train_build, tmp_path):
    build = read_build(train_build)
    assert build.split == "train" and build.fill == build.config["mask"]["fill"] and build.plan_skips is None
    write_build(tmp_path, build)
    assert (tmp_path / BUILD_FILE).read_bytes() == (train_build / BUILD_FILE).read_bytes()

    run = TrainingRun(
        "0.1", {"trainer": "sft"}, {"max_steps": 2}, {"model_name_or_path": "m"}, RunDataset("d", build)
    )
    write_training_run(tmp_path / "run", run)
    assert read_training_run(tmp_path / "run") == run and read_training_run(tmp_path) is None
    text = (tmp_path / "run" / TRAINING_RUN_FILE).read_text()
    write_training_run(tmp_path / "run", read_training_run(tmp_path / "run"))
    assert (tmp_path / "run" / TRAINING_RUN_FILE).read_text() == text
    assert json.loads(text)["dataset"]["build"] == json.loads((train_build / BUILD_FILE).read_text())

    identity = EvalRun("tiny:qwen2_5_vl", None, {"data": "ab", "prompt_version": "mpcc-1", "limit": None})
    write_eval_run(tmp_path, identity)
    assert list(json.loads((tmp_path / EVAL_RUN_FILE).read_text())) == [
        "model",
        "weights",
        "data",
        "prompt_version",
        "limit",
    ]
    assert read_eval_run(tmp_path) == identity


def test_a_record_of_an_earlier_mpcc_reads_and_writes_back_as_it_was(train_build, tmp_path):
    """Early builds recorded `annotations_sha256`, and no input_sha256 or images_digest (e.g. a cached
    synthetic build): the record reads, and writes back (an annotated copy, say) with what it had."""
    record = json.loads((train_build / BUILD_FILE).read_text())
    early = {k: v for k, v in record.items() if k not in ("input_sha256", "images_digest")}
    text = json.dumps({**early, "annotations_sha256": "ab"}, indent=2, sort_keys=True) + "\n"
    (tmp_path / BUILD_FILE).write_text(text)
    build = read_build(tmp_path)
    assert build.images_digest is None and build.extra == {"annotations_sha256": "ab"}
    write_build(tmp_path, build)
    assert (tmp_path / BUILD_FILE).read_text() == text


def _without(record: dict, key: str) -> dict:
    return {k: v for k, v in record.items() if k != key}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: "{", "not an mpcc build record (JSONDecodeError"),
        (lambda r: "[1]", "not an mpcc build record (a JSON list, not an object)"),
        (lambda r: json.dumps(_without(r, "images_dir")), "the record lacks 'images_dir'"),
        (lambda r: json.dumps({**r, "num_rows": "many"}), "'num_rows' is \"many\", not int"),
        (lambda r: json.dumps({**r, "config": _without(r["config"], "mask")}), "config lacks mask"),
    ],
)
def test_a_record_that_is_not_one_names_its_file_and_what_is_wrong(train_build, tmp_path, change, message):
    (tmp_path / BUILD_FILE).write_text(change(json.loads((train_build / BUILD_FILE).read_text())))
    with pytest.raises(InputError) as caught:
        read_build(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / BUILD_FILE}: ") and message in str(caught.value)


def test_a_training_run_names_the_field_of_its_build_record_that_is_wrong(train_build, tmp_path):
    run = TrainingRun("0.1", {}, {}, {}, RunDataset("d", replace(read_build(train_build), thresholds=None)))
    write_training_run(tmp_path, run)
    with pytest.raises(InputError, match=r"mpcc_run.json: 'dataset.build.thresholds' is null, not list"):
        read_training_run(tmp_path)
    with pytest.raises(InputError, match=r"eval_run.json: not an `mpcc eval` output's record \(FileNotFound"):
        read_eval_run(tmp_path)


def test_records_import_no_command_layer():
    """The records sit low: reading one pulls in no data pipeline, trainer, evaluation, export or CLI."""
    code = "import sys, mpcc.records; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    above = ("mpcc.data", "mpcc.evaluation", "mpcc.training", "mpcc.export", "mpcc.cli", "datasets", "torch")
    assert not [name for name in loaded if name.startswith(above)]
