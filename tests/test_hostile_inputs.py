"""What a careless or hostile user gives mpcc ends in one line naming what is wrong and where: files too
large to read whole (or endless, as /dev/zero), YAML alias bombs, outputs it cannot write, a full disk,
Ctrl-C, recipes that would fail only after loading the model."""

from __future__ import annotations

import errno
import shutil

import datasets
import pytest
from safetensors import SafetensorError

import mpcc.evaluation.harness
import mpcc.train
from mpcc.cli import main
from mpcc.errors import ConfigError, InputError
from mpcc.models import load_processor
from mpcc.training.config import load_recipe


def _one_line(capsys, prefix: str) -> str:
    """The one line of mpcc's error output (beside progress bars), which starts with `prefix`."""
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("mpcc")]
    assert "Traceback" not in err and line.startswith(prefix), err
    return line


def _big_file(path, mib: float):
    path.write_bytes(b" " * int(mib * (1 << 20)))
    return path


# ------------------------------------------------------------------------------------ size caps


@pytest.mark.parametrize("what", ["annotations", "distractors", "mpcc_eval", "traces"])
def test_a_data_file_over_the_cap_is_one_line_naming_it_and_the_cap(
    what, scenes, train_build, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MPCC_MAX_INPUT_MB", "1")
    big = _big_file(tmp_path / "big.json", 1.5)
    out = str(tmp_path / "out")
    if what == "traces":
        argv = ["annotate", "import", str(big), "--data", str(train_build), "--out", out]
    else:
        ann = big if what == "annotations" else scenes / "instances.json"
        argv = ["prepare", "eval", "--annotations", str(ann), "--images", str(scenes / "images")]
        argv += ["--out", out] + ([] if what == "annotations" else [f"--{what.replace('_', '-')}", str(big)])
    assert main(argv) == 2
    line = _one_line(capsys, f"mpcc {argv[0]}: error:")
    assert f"{big}: 1,572,864 bytes, over the 1 MiB cap" in line and "MPCC_MAX_INPUT_MB" in line
    assert not (tmp_path / "out").exists()


def test_an_endless_traces_file_stops_at_the_cap(train_build, tmp_path, monkeypatch, capsys):
    """/dev/zero: stat says 0 bytes, so only a bounded read stops it (it used to grow to 22 GB)."""
    monkeypatch.setenv("MPCC_MAX_INPUT_MB", "1")
    argv = ["annotate", "import", "/dev/zero", "--data", str(train_build), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    line = _one_line(capsys, "mpcc annotate: error:")
    assert "/dev/zero: not a regular file, over the 1 MiB cap" in line


@pytest.mark.parametrize("source", ["/dev/zero", "big"])
def test_a_config_file_over_its_cap_is_one_line(source, tmp_path, capsys):
    config = str(_big_file(tmp_path / "c.yaml", 16.5)) if source == "big" else source
    assert main(["eval", "--config", config, "--out", str(tmp_path / "out")]) == 2
    line = _one_line(capsys, "mpcc eval: error:")
    what = "17,301,504 bytes" if source == "big" else "not a regular file"
    assert f"{config}: {what}, over the 16 MiB cap on recipes and config files" in line


def test_a_recipe_that_is_not_a_regular_file_is_named_so(capsys):
    assert main(["train", "/dev/zero"]) == 2
    line = _one_line(capsys, "mpcc train: error:")
    assert "/dev/zero: not a regular file" in line and "no such file" not in line


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)


@pytest.mark.parametrize("text", [BOMB, "beta: &b 0.1\nlearning_rate: *b\n"], ids=["bomb", "alias"])
def test_yaml_aliases_are_refused_in_recipes_and_config_files(text, tmp_path, capsys):
    """A few nested aliases expand to 9**9 strings: refused at the first alias, wherever it is."""
    file = tmp_path / "x.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{file}: line 2, column \d+: aliases \(\*name\) are not"):
        load_recipe(str(file))
    assert main(["eval", "--config", str(file), "--out", str(tmp_path / "out")]) == 2
    assert "aliases (*name) are not supported" in _one_line(capsys, "mpcc eval: error:")


# ------------------------------------------------------------------------- system errors, Ctrl-C


@pytest.mark.parametrize("command", ["eval", "prepare", "export"])
def test_an_output_under_a_file_is_one_line_naming_the_path(
    command, scenes, train_build, tiny_model, tmp_path, capsys
):
    """What stops root too (chmod does not): a folder to create inside a regular file."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = str(blocker / "out")
    argv = {
        "eval": ["eval", "--model", str(tiny_model), "--data", str(train_build), "--out", out],
        "prepare": ["prepare", "train", "--annotations", str(scenes / "instances.json")]
        + ["--images", str(scenes / "images"), "--out", out],
        "export": ["export", str(tiny_model), "--out", out],
    }[command]
    assert main(argv) == 2
    line = _one_line(capsys, f"mpcc {command}: error:")
    assert str(blocker) in line and ("not a directory" in line or "exists and is not a folder" in line)


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")  # as a write() raises it: no file name


def test_a_full_disk_during_eval_names_the_output(train_build, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mpcc.evaluation.harness, "run_eval", _full_disk)
    out = tmp_path / "out"
    assert main(["eval", "--model", "m", "--data", str(train_build), "--out", str(out)]) == 2
    assert _one_line(capsys, "mpcc eval:") == f"mpcc eval: error: no space left on device writing {out}"


def test_a_full_disk_during_export_is_one_line(tiny_model, tmp_path, monkeypatch, capsys):
    """safetensors (Rust) reports the OSError only in its message."""

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", full)
    out = tmp_path / "out"
    assert main(["export", str(tiny_model), "--out", str(out)]) == 2
    assert _one_line(capsys, "mpcc export:") == f"mpcc export: error: no space left on device writing {out}"
    assert list(tmp_path.iterdir()) == []  # no partial output, no staging directory left


def test_an_unwritable_cache_names_it_and_mpcc_cache(eval_build, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MPCC_CACHE", str(tmp_path / "file" / "cache"))
    out = tmp_path / "out"
    assert main(["eval", "--model", "tiny:qwen2_5_vl", "--data", str(eval_build), "--out", str(out)]) == 2
    line = _one_line(capsys, "mpcc eval: error:")
    assert f"{tmp_path / 'file'}" in line and "MPCC_CACHE" in line


def test_a_dataset_neither_mpcc_nor_blink_is_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    datasets.Dataset.from_dict({"question": ["q"], "answer": ["A"]}).save_to_disk(str(data))
    assert main(["eval", "--model", "m", "--data", str(data), "--out", str(tmp_path / "out")]) == 2
    line = _one_line(capsys, "mpcc eval: error:")
    assert str(data) in line and "BLINK" in line and "choices" in line


def test_ctrl_c_is_one_line_status_130_and_leaves_no_output(scenes, tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.arrow_writer.ArrowWriter, "write_table", interrupt)
    out = tmp_path / "out" / "train"
    args = ["--annotations", str(scenes / "instances.json"), "--images", str(scenes / "images")]
    assert main(["prepare", "train", *args, "--out", str(out), "--num-proc", "1"]) == 130
    assert _one_line(capsys, "mpcc prepare:") == "mpcc prepare: interrupted"
    assert list((tmp_path / "out").iterdir()) == []  # no partial output, no staging directory left


@pytest.mark.parametrize(
    ("raised", "status", "message"),
    [
        (KeyboardInterrupt(), 130, "mpcc.train: interrupted"),
        (PermissionError(errno.EACCES, "Permission denied", "/runs/x"), 2, "/runs/x: permission denied"),
    ],
)
def test_mpcc_train_reports_interrupts_and_system_errors_in_one_line(
    raised, status, message, monkeypatch, capsys
):
    def run(argv):
        raise raised

    monkeypatch.setattr(mpcc.train, "main", run)
    assert mpcc.train._cli(["tiny/grpo"]) == status
    assert message in _one_line(capsys, "mpcc.train:")


def test_peft_without_target_modules_fails_at_start_naming_the_key(tmp_path, monkeypatch, capsys):
    """PEFT knows no default LoRA targets for Qwen VL models: the run would stop after loading the model."""
    monkeypatch.setenv("MPCC_CACHE", str(tmp_path))  # nothing is built, but never into the user's cache
    with pytest.raises(ConfigError, match="use_peft.*lora_target_modules.*qwen2_5_vl"):
        load_recipe("tiny/grpo", ["--use_peft", "true"])
    assert main(["train", "tiny/grpo", "--use_peft", "true"]) == 2
    assert "lora_target_modules" in _one_line(capsys, "mpcc train: error:")
    load_recipe("tiny/grpo", ["--use_peft", "true", "--lora_target_modules", "all-linear"])  # given: fine


# ----------------------------------------------------------------------------------- messages


def test_an_invalid_config_json_is_named_as_such(tiny_model, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "config.json").write_text('{"model_type": "qwen2_5_vl",\n')
    with pytest.raises(InputError, match=rf"^{model / 'config.json'}: invalid JSON \(.*line 2"):
        load_processor(model)
    assert main(["export", str(model), "--out", str(tmp_path / "out")]) == 2
    line = _one_line(capsys, "mpcc export: error:")
    assert "config.json: invalid JSON" in line and "no processor" not in line
