"""Every command's options come from dataclass fields: `--help`, `--config FILE.yaml` and the flags agree.

A config file is as strict as a recipe: an unknown key or a value of the wrong type stops the command
before any work, naming the key; flags override the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import re
import subprocess
import sys
import typing

import pytest

import mpcc.data.synthetic
from mpcc.annotation.config import AnnotateConfig, TeacherConfig
from mpcc.cli import COMMANDS, command_parser, main
from mpcc.data.build import BuildConfig
from mpcc.data.selection import SelectionConfig
from mpcc.errors import InputError
from mpcc.evaluation.config import EvalConfig
from mpcc.generation.decoding import Decoding
from mpcc.options import options_of, parse_options, to_bool


@pytest.mark.parametrize(
    ("argv", "yaml", "message"),
    [
        (["prepare", "eval"], "mask_mode: bbox\nmax_item: 10\n", "unknown option 'max_item'"),
        (["prepare", "eval"], "max_per_image: lots\n", "option 'max_per_image': invalid value 'lots'"),
        (["prepare", "eval"], "mask_mode: cloud\n", "option 'mask_mode': invalid value 'cloud'"),
        (["eval"], "model: tiny:qwen2_5_vl\nsampels: 4\n", "unknown option 'sampels'"),
        (["eval"], "batch_size: 1.5\n", "option 'batch_size': invalid value 1.5"),
        (["eval"], "formats: [mc4, essay]\n", "formats must be a non-empty subset"),
        (["annotate", "DATA"], "teachr: http://x/v1\n", "unknown option 'teachr'"),
        (["annotate", "DATA"], "timeout: soon\n", "option 'timeout': invalid value 'soon'"),
        (["annotate", "DATA"], "overwrite: maybe\n", "option 'overwrite': invalid value 'maybe'"),
    ],
)
def test_bad_config_files_stop_naming_the_key(argv, yaml, message, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml)
    assert main([*argv, "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert str(config) in err or "subset" in message  # a config's own check names the option instead
    assert not (tmp_path / "out").exists()


def test_flags_override_the_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "annotations: a.json\nimages: im\nmask_mode: bbox\nmin_context: 5\nformats: [mc4]\nout: elsewhere\n"
    )
    parser, classes = command_parser("prepare")
    args = parser.parse_args(["eval", "--config", str(config), "--min-context", "1", "--out", str(tmp_path)])
    job, build = parse_options(args, *classes)
    assert build.mask.mode == "bbox" and build.formats == ("mc4",)  # from the file
    assert build.selection.min_context == 1 and job.out == tmp_path  # the flags win


@pytest.mark.real_coco
def test_the_same_run_from_flags_and_from_a_config_file(tinycoco, tmp_path):
    flags = ["--mask-mode", "bbox", "--max-per-image", "1", "--formats", "mc4,yesno", "--no-balance"]
    source = ["--annotations", str(tinycoco / "instances.json"), "--images", str(tinycoco / "images")]
    assert main(["prepare", "eval", *source, *flags, "--num-proc", "1", "--out", str(tmp_path / "a")]) == 0
    config = tmp_path / "prepare.yaml"
    config.write_text(
        f"annotations: {tinycoco / 'instances.json'}\nimages: {tinycoco / 'images'}\nmask_mode: bbox\n"
        "max_per_image: 1\nformats: [mc4, yesno]\nbalance: false\nnum_proc: 1\n"
    )
    assert main(["prepare", "eval", "--config", str(config), "--out", str(tmp_path / "b")]) == 0
    compared = filecmp.dircmp(tmp_path / "a", tmp_path / "b")
    assert compared.left_list == compared.right_list and len(compared.left_list) >= 5
    assert not compared.diff_files and not compared.funny_files


def _help(command: str) -> str:
    return re.sub(r"\s+", " ", command_parser(command)[0].format_help())


@pytest.mark.parametrize(
    ("command", "cls", "name"),
    [
        ("prepare", SelectionConfig, "min_context"),
        ("prepare", BuildConfig, "max_items"),
        ("prepare", BuildConfig, "seed"),  # a default of 0 is shown too
        ("eval", EvalConfig, "batch_size"),
        ("eval", Decoding, "max_new_tokens"),
        ("annotate", TeacherConfig, "max_new_tokens"),
        ("annotate", AnnotateConfig, "mode"),
    ],
)
def test_help_shows_the_fields_help_and_default(command, cls, name):
    """One place: the dataclass field. Its help and default are what `--help` prints."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    text = _help(command)
    flag = "--" + (field.metadata.get("flag") or name).replace("_", "-")
    assert f"{flag} " in text
    assert re.sub(r"\s+", " ", field.metadata["help"]) in text
    assert f"(default: {field.default})" in text


def test_every_command_builds_its_parser_and_declares_each_option_once():
    for name in COMMANDS:
        parser, classes = command_parser(name)
        assert parser.prog == f"mpcc {name}"
        keys = [o.key for c in classes for o in options_of(c)]
        assert len(keys) == len(set(keys)), name


@pytest.mark.parametrize("error", [ValueError("a library failed"), InputError("bad.json: no images key")])
def test_only_mpcc_errors_are_one_line(error, tmp_path, monkeypatch, capsys):
    """A deliberate MpccError prints one line and exits 2; any other exception keeps its traceback."""

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(mpcc.data.synthetic, "generate_scenes", fail)
    if isinstance(error, InputError):
        assert main(["synth", "--out", str(tmp_path)]) == 2
        assert capsys.readouterr().err == "mpcc synth: error: bad.json: no images key\n"
    else:
        with pytest.raises(ValueError, match="a library failed"):
            main(["synth", "--out", str(tmp_path)])


def test_every_numeric_option_declares_its_bounds():
    """Limits hold everywhere: each int/float option of every command says which values are allowed."""
    unbounded = []
    for name in COMMANDS:
        for opt in (o for c in command_parser(name)[1] for o in options_of(c)):
            kind = typing.get_args(opt.annotation) or (opt.annotation,)
            numeric = {int, float} & set(kind) and not opt.field.metadata.get("parse")
            if numeric and opt.field.metadata["bounds"] == (None, None, None):
                unbounded.append(f"{name} --{opt.key}")
    assert not unbounded


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "--limit", "0"], "--limit must be >= 1, got 0"),
        (["eval", "--limit", "-3"], "--limit must be >= 1, got -3"),
        (["eval", "--top-p", "1.5"], "--top-p must be <= 1, got 1.5"),
        (
            ["prepare", "train", "--annotations", "a.json", "--images", "im", "--max-area-frac", "0"],
            "--max-area-frac must be > 0, got 0.0",
        ),
        (["annotate", "some_build", "--timeout", "0"], "--timeout must be > 0, got 0.0"),
        (["demo", "--num-images", "1"], "--num-images must be >= 2, got 1"),
    ],
)
def test_out_of_range_numbers_stop_at_parse_time(args, message, tmp_path, capsys):
    """Before any work: nothing is created at --out, one line names the option (also from --config)."""
    out = tmp_path / "out"
    assert main([*args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()
    flag, value = args[-2], args[-1]
    config = tmp_path / "c.yaml"
    config.write_text(f"{flag[2:].replace('-', '_')}: {value}\n")
    assert main([*args[:-2], "--config", str(config), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(
    "word", ["true", "YES", "t", "y", "1", "false", "No", "f", "n", "0", "on", "off", "2", ""]
)
def test_options_take_the_words_recipes_take(word):
    """`mpcc` options read true/false exactly as TRL's recipe parser does (transformers' string_to_bool)."""
    from transformers.hf_argparser import string_to_bool

    try:
        expected = string_to_bool(word)
    except argparse.ArgumentTypeError:
        with pytest.raises(ValueError, match="expected one of"):
            to_bool(word)
    else:
        assert to_bool(word) is expected


# Their option dataclasses live beside the torch code they configure: their --help takes seconds.
HEAVY_HELP = ("tiny-model", "export", "bench")
HELP_PROBE = """
import sys
from mpcc.cli import main
try:
    main([sys.argv[1], "--help"])
except SystemExit:
    pass
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in HEAVY_HELP])
def test_help_reads_the_options_without_importing_torch(command):
    """`mpcc demo --help`, the README's first command, took 6.5 s when its options sat in mpcc.demo."""
    run = subprocess.run([sys.executable, "-c", HELP_PROBE, command], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"usage: mpcc {command}" in run.stdout
    assert run.stdout.splitlines()[-1] == "torch imported: False"
