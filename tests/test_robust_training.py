"""Mistakes a user makes around `mpcc train` and `mpcc prepare` stop at start with one line that names
the key, file or path (exit status 2; the traceback only with -v), before anything heavy is loaded."""

from __future__ import annotations

import errno
import shutil

import datasets
import pytest

import mpcc.models
import mpcc.train
from mpcc.cli import main as cli_main
from mpcc.data.build import BuildConfig, BuildError, build
from mpcc.errors import ConfigError, InputError
from mpcc.models import load_model
from mpcc.records import write_training_run
from mpcc.training.config import load_recipe
from mpcc.training.data import load_train_dataset
from mpcc.training.output_dir import COMPLETE
from mpcc.training.record import run_record

RECIPE = "tiny/grpo"  # no accelerate_config: `mpcc train` runs it in this process


class Built(Exception):
    """build_trainer was reached: the check under test did not stop the run first."""


@pytest.fixture
def no_trainer(monkeypatch):
    """Nothing heavy may run: building the trainer (model, processor, data) raises."""

    def refuse(*args, **kwargs):
        raise Built

    monkeypatch.setattr(mpcc.train, "build_trainer", refuse)


def _truncated_copy(model, dest):
    shutil.copytree(model, dest)
    weights = dest / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size - 1000)
    return weights, size


def _error_lines(err: str, prefix: str = "mpcc train: error:") -> list[str]:
    assert "usage:" not in err
    return [line for line in err.splitlines() if line.startswith(prefix)]


def test_an_eval_build_is_not_training_data_unless_the_recipe_says_so(
    eval_build, tmp_path, no_trainer, capsys
):
    args = ["--dataset_path", str(eval_build), "--output_dir", str(tmp_path / "run")]
    assert cli_main(["train", RECIPE, *args]) == 2  # refused before the trainer (and its model) is built
    (line,) = _error_lines(capsys.readouterr().err)
    assert str(eval_build) in line and "eval build" in line and "allow_eval_data: true" in line
    with pytest.raises(ConfigError, match="allow_eval_data"):
        load_train_dataset(str(eval_build), "grpo")  # whoever calls the loader
    run = load_recipe(RECIPE, [*args, "--allow_eval_data", "true"])[0]
    assert run.allow_eval_data and len(load_train_dataset(str(eval_build), "grpo", allow_eval=True)) > 0
    with pytest.raises(Built):  # allowed: on to the trainer
        mpcc.train.main([RECIPE, *args, "--allow_eval_data", "true"])


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [("learning_rate: fast", "learning_rate", "'fast'"), ("use_cpu: maybe", "use_cpu", "maybe")],
)
def test_a_wrong_type_is_one_line_naming_the_file_key_and_value(tmp_path, capsys, text, key, value):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"trainer: grpo\nmodel_name_or_path: tiny:qwen2_5_vl\noutput_dir: o\nuse_cpu: true\n{text}\n"
    )
    assert cli_main(["train", str(recipe)]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert str(recipe) in line and key in line and value in line
    assert mpcc.train._cli([str(recipe)]) == 2  # `python -m mpcc.train` too
    (line,) = _error_lines(capsys.readouterr().err, "mpcc.train: error:")
    assert str(recipe) in line and key in line and value in line


def test_verbose_adds_the_traceback(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "trainer: grpo\nmodel_name_or_path: tiny:qwen2_5_vl\noutput_dir: o\nlearning_rate: fast\n"
    )
    assert cli_main(["-v", "train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and len(_error_lines(err)) == 1
    assert mpcc.train._cli(["-v", str(recipe)]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "overrides", "key"),
    [
        ("use_cpu: [1, 2]\n", [], "use_cpu"),
        ("max_steps: [1, 2]\n", [], "max_steps"),
        ("", ["--max_steps", "1", "2"], "max_steps"),
    ],
)
def test_a_list_for_a_one_value_key_names_the_key(tmp_path, text, overrides, key):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"trainer: grpo\nmodel_name_or_path: tiny:qwen2_5_vl\noutput_dir: o\nuse_cpu: true\n{text}"
    )
    with pytest.raises(ConfigError, match=rf"r\.yaml: {key}\b.*takes one value"):
        load_recipe(recipe, overrides)
    # keys that take several values still do
    assert load_recipe(RECIPE, ["--lora_target_modules", "q_proj", "v_proj"])[2].lora_target_modules == [
        "q_proj",
        "v_proj",
    ]


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/data-00000-of-00001.arrow")


@pytest.mark.parametrize("writer", ["generate", "save"])
def test_a_full_disk_during_prepare_names_the_output(scenes, tmp_path, monkeypatch, capsys, writer):
    """`datasets` wraps the generator's OSError in a DatasetGenerationError; save_to_disk raises it as is."""
    if writer == "generate":
        monkeypatch.setattr(datasets.arrow_writer.ArrowWriter, "write_table", _disk_full)
    else:
        monkeypatch.setattr(datasets.Dataset, "save_to_disk", _disk_full)
    out = tmp_path / "out" / "train"
    with pytest.raises(BuildError, match=rf"^no space left on device writing {out}\b"):
        build(scenes / "instances.json", scenes / "images", out, BuildConfig("train"), num_proc=1)
    args = ["--annotations", str(scenes / "instances.json"), "--images", str(scenes / "images")]
    assert cli_main(["prepare", "train", *args, "--out", str(out), "--num-proc", "1"]) == 2
    (line,) = _error_lines(capsys.readouterr().err, "mpcc prepare: error:")
    assert f"no space left on device writing {out}" in line
    assert list((tmp_path / "out").iterdir()) == []  # no partial output, no staging directory left


def test_a_truncated_model_file_is_named_before_loading(tiny_model, tmp_path, no_trainer, capsys):
    weights, size = _truncated_copy(tiny_model, tmp_path / "model")
    message = rf"{weights}: truncated: {size - 1000} bytes, header says {size}"
    with pytest.raises(InputError, match=message):
        load_model(tmp_path / "model")
    args = ["--model_name_or_path", str(tmp_path / "model"), "--output_dir", str(tmp_path / "run")]
    assert cli_main(["train", RECIPE, *args]) == 2  # before the trainer
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"{weights}: truncated" in line
    with open(weights, "r+b") as f:  # cut inside the header
        f.truncate(100)
    with pytest.raises(InputError, match=rf"{weights}: truncated: 100 bytes, header says at least"):
        load_model(tmp_path / "model")
    assert mpcc.models.check_safetensors(tiny_model) == [tiny_model / "model.safetensors"]


@pytest.mark.parametrize("resume", ["last", "true", "auto", "path"])
def test_resuming_from_a_truncated_checkpoint_fails_before_anything_loads(
    tiny_model, tmp_path, no_trainer, resume
):
    out = tmp_path / "run"
    write_training_run(out, run_record(*load_recipe(RECIPE, ["--output_dir", str(out)])))  # this run's folder
    _truncated_copy(tiny_model, out / "checkpoint-1")
    weights, _ = _truncated_copy(tiny_model, out / "checkpoint-2")  # the newest one is resumed from
    for checkpoint in ("checkpoint-1", "checkpoint-2"):  # saves that finished: the file was cut later
        (out / checkpoint / COMPLETE).write_text("")
    value = str(out / "checkpoint-2") if resume == "path" else resume
    with pytest.raises(InputError, match=rf"{weights}: truncated"):
        mpcc.train.main([RECIPE, "--output_dir", str(out), "--resume_from_checkpoint", value])


def test_resuming_without_a_checkpoint_fails_at_start(tmp_path, no_trainer):
    out = str(tmp_path / "run")
    none = rf"resume_from_checkpoint last: no complete checkpoint-N folder in .*{out}"
    with pytest.raises(InputError, match=none):
        mpcc.train.main([RECIPE, "--output_dir", out, "--resume_from_checkpoint", "last"])
    with pytest.raises(InputError, match=r"resume_from_checkpoint .*nowhere: no such checkpoint folder"):
        mpcc.train.main([RECIPE, "--output_dir", out, "--resume_from_checkpoint", str(tmp_path / "nowhere")])
    with pytest.raises(Built):  # auto without a checkpoint: from scratch
        mpcc.train.main([RECIPE, "--output_dir", out, "--resume_from_checkpoint", "auto"])
