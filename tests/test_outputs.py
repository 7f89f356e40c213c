"""mpcc.outputs: staged outputs appear whole or not at all, replace only an mpcc output and only when asked,
never touch a command's inputs, have one writer at a time, clean up after killed runs, follow the umask."""

import contextlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mpcc.cli import main
from mpcc.data.build import BuildConfig, BuildError, build
from mpcc.errors import InputError, MpccError
from mpcc.files import write_text_atomic
from mpcc.outputs.checks import OutputExistsError, check_output
from mpcc.outputs.locks import OutputBusyError, lock_output
from mpcc.outputs.marker import MARKER
from mpcc.outputs.staging import staged_output


def _names(folder) -> list[str]:
    """What a folder holds, but the marker every staged output carries."""
    return sorted(p.name for p in folder.iterdir() if p.name != MARKER)


def test_success_renames_the_staging_directory_into_place(tmp_path):
    out = tmp_path / "sub" / "out"
    with staged_output(out) as staging:
        assert staging.parent == out.parent and staging.name.startswith(".out.")
        assert [p.name for p in staging.iterdir()] == [MARKER]
        (staging / "data.txt").write_text("new")
        assert not out.exists()  # nothing visible until the block succeeds
    assert (out / "data.txt").read_text() == "new"
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no staging, no lock file left
    (tmp_path / "plain").mkdir()
    assert out.stat().st_mode == (tmp_path / "plain").stat().st_mode  # the umask's, not mkdtemp's 0700
    marker = json.loads((out / MARKER).read_text())
    assert set(marker) == {"written_by", "mpcc_version"}  # no pid or host once finished


def test_failure_leaves_nothing_behind_and_out_untouched(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), staged_output(out) as staging:
        (staging / "part.txt").write_text("half")
        raise RuntimeError("boom")
    assert _names(tmp_path) == []

    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_output(out, overwrite=True) as staging:
        (staging / "part.txt").write_text("half")
        raise KeyboardInterrupt
    assert _names(tmp_path) == ["out"] and _names(out) == ["old.txt"]


def test_an_occupied_output_is_refused_without_overwrite_and_replaced_with_it(tmp_path):
    out = tmp_path / "out"
    check_output(out)  # absent
    out.mkdir()
    check_output(out)  # empty
    with staged_output(out) as staging:  # an empty directory is replaced without --overwrite
        (staging / "a.txt").write_text("a")
    with pytest.raises(OutputExistsError, match=f"{out} exists and is not empty.*--overwrite"):
        check_output(out)
    with pytest.raises(InputError, match="exists and is not empty"):
        check_output(out, error=InputError)
    with pytest.raises(OutputExistsError), staged_output(out) as staging:
        (staging / "b.txt").write_text("b")
    assert _names(tmp_path) == ["out"] and _names(out) == ["a.txt"]

    check_output(out, overwrite=True)  # a previous mpcc output
    with staged_output(out, overwrite=True) as staging:
        (staging / "b.txt").write_text("b")
    assert _names(tmp_path) == ["out"] and _names(out) == ["b.txt"]

    file = tmp_path / "file"
    file.write_text("not a folder")
    with pytest.raises(OutputExistsError):
        check_output(file)


def test_an_output_written_meanwhile_is_kept_with_first_wins_and_refused_without(tmp_path):
    out = tmp_path / "cache"

    def race(first_wins: bool):
        with staged_output(out, first_wins=first_wins) as staging:
            (staging / "mine.txt").write_text("mine")
            out.mkdir()  # another process renames its copy into place first
            (out / "theirs.txt").write_text("theirs")

    race(first_wins=True)
    assert _names(tmp_path) == ["cache"] and _names(out) == ["theirs.txt"]
    shutil.rmtree(out)
    with pytest.raises(OutputExistsError):
        race(first_wins=False)
    assert _names(tmp_path) == ["cache"] and _names(out) == ["theirs.txt"]


# ----------------------------------------------------------------------------------- inputs (1)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_an_output_that_is_holds_or_lies_inside_an_input_is_refused(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "instances.json").write_text("{}")
    for out, relation in [
        (data / "images", "is"),
        (data, "contains"),
        (data / "images" / "new", "lies inside"),
        (tmp_path, "contains"),
    ]:
        for overwrite in (False, True):
            with pytest.raises(InputError, match=f"the output {out} {relation} the input {data / 'images'}"):
                check_output(out, overwrite, InputError, inputs=(None, data / "images"))
    with pytest.raises(OutputExistsError, match="contains the input .*instances.json"):
        check_output(data, True, inputs=(data / "instances.json",))
    link = tmp_path / "link"
    link.symlink_to(data / "images")
    with pytest.raises(OutputExistsError, match="is the input"):
        check_output(link, True, inputs=(data / "images",))  # compared once resolved
    check_output(tmp_path / "other", inputs=(data, data / "instances.json", "Qwen/Qwen2-VL", "tiny:qwen2_vl"))
    check_output(tmp_path / "datapoints", inputs=(data,))  # a sibling with the same prefix is fine


def test_prepare_refuses_an_output_that_would_delete_its_inputs(scenes, tmp_path, capsys):
    before = _files(scenes)
    annotations, images = scenes / "instances.json", scenes / "images"
    for out, relation in [(images, "is"), (scenes, "contains"), (images / "out", "lies inside")]:
        argv = ["prepare", "train", "--annotations", str(annotations), "--images", str(images)]
        assert main([*argv, "--out", str(out), "--overwrite", "--num-proc", "1"]) == 2
        err = capsys.readouterr().err
        assert f"the output {out} {relation} the input {scenes}" in err, err
    assert _files(scenes) == before and not (images / "out").exists()


def test_overwrite_never_deletes_an_input_given_as_an_option(scenes, tmp_path, capsys):
    """Every path option is an input: a distractors or MPCC-Eval file inside a previous output."""
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text("{}")  # a previous mpcc output, which --overwrite may replace
    for flag, name in [("--distractors", "d.jsonl"), ("--mpcc-eval", "me.json")]:
        (out / name).write_text("")
        argv = ["prepare", "eval", "--annotations", str(scenes / "instances.json"), "--images"]
        argv += [str(scenes / "images"), flag, str(out / name), "--out", str(out), "--overwrite"]
        assert main([*argv, "--num-proc", "1"]) == 2, flag
        err = capsys.readouterr().err
        assert f"the output {out} contains the input {out / name}" in err, err
    assert _names(out) == ["d.jsonl", "me.json"]
    for field, name in [("distractors", "d.jsonl"), ("mpcc_eval", "me.json")]:  # the library call too
        config = BuildConfig("eval", **{field: out / name})
        with pytest.raises(BuildError, match=f"the output {out} contains the input {out / name}"):
            build(scenes / "instances.json", scenes / "images", out, config, overwrite=True, num_proc=1)
    assert _names(out) == ["d.jsonl", "me.json"]


def test_every_directory_writer_refuses_its_inputs(train_build, tmp_path, capsys):
    before = _files(train_build)
    inside = train_build / "out"
    commands = {
        "merge-shards": ["merge-shards", str(train_build), "--out", str(train_build.parent), "--overwrite"],
        "annotate": ["annotate", str(train_build), "--teacher", "tiny:qwen2_vl", "--out", str(inside)],
        "annotate import": [
            "annotate",
            "import",
            "t.jsonl",
            "--data",
            str(train_build),
            "--out",
            str(inside),
        ],
        "eval": ["eval", "--model", "tiny:qwen2_vl", "--data", str(train_build), "--out", str(train_build)],
        "eval model": ["eval", "--model", str(train_build), "--data", str(tmp_path), "--out", str(inside)],
        "export": ["export", str(train_build), "--out", str(inside), "--overwrite"],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert "the input" in err and str(train_build) in err, (name, err)
    assert _files(train_build) == before and not inside.exists()


# --------------------------------------------------------------------------- replacing (2)


def test_overwrite_replaces_only_a_previous_mpcc_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="a directory mpcc did not write .*precious.txt"):
        check_output(out, overwrite=True)
    with pytest.raises(OutputExistsError, match="mpcc did not write"), staged_output(out, True) as staging:
        (staging / "new.txt").write_text("new")
    assert _names(out) == ["precious.txt"]

    file, link = tmp_path / "file", tmp_path / "link"
    file.write_text("mine")
    link.symlink_to(out)
    for path, what in [(file, "a file"), (link, "a symlink")]:
        with pytest.raises(OutputExistsError, match=f"{path} is {what}: --overwrite replaces only"):
            check_output(path, overwrite=True)
        with pytest.raises(OutputExistsError, match=what), staged_output(path, overwrite=True):
            pass
    assert file.read_text() == "mine" and link.readlink() == out and _names(out) == ["precious.txt"]

    for record in ("mpcc_build.json", "eval_run.json", "mpcc_run.json"):  # written by an mpcc command
        previous = tmp_path / record.split(".")[0]
        previous.mkdir()
        (previous / record).write_text("{}")
        check_output(previous, overwrite=True)
        with staged_output(previous, overwrite=True) as staging:
            (staging / "new.txt").write_text("new")
        assert _names(previous) == ["new.txt"]
    assert _names(tmp_path) == ["eval_run", "file", "link", "mpcc_build", "mpcc_run", "out"]


def test_overwrite_with_a_kind_replaces_only_an_output_of_that_kind(tmp_path):
    with staged_output(tmp_path / "export", kind="export") as staging:
        (staging / "a.txt").write_text("a")
    assert json.loads((tmp_path / "export" / MARKER).read_text())["kind"] == "export"
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / MARKER).write_text("{}")  # from before kinds were recorded: any kind
    for name in ("export", "legacy"):
        with staged_output(tmp_path / name, overwrite=True, kind="export") as staging:
            (staging / "b.txt").write_text("b")
        assert _names(tmp_path / name) == ["b.txt"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "eval_run.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="is an mpcc eval output: .* replaces only a previous export"):
        check_output(tmp_path / "run", overwrite=True, kind="export")
    with (
        pytest.raises(OutputExistsError, match="mpcc export output"),
        staged_output(tmp_path / "export", overwrite=True, kind="compare"),
    ):
        pass
    assert _names(tmp_path / "run") == ["eval_run.json"] and _names(tmp_path / "export") == ["b.txt"]


def test_something_written_to_out_during_the_run_is_never_replaced(tmp_path):
    def racing(out: Path, overwrite: bool, appear) -> None:
        with pytest.raises(OutputExistsError), staged_output(out, overwrite) as staging:
            (staging / "new.txt").write_text("new")
            appear(out)

    def folder(out):
        out.mkdir()
        (out / "precious.txt").write_text("mine")

    def file(out):
        out.write_text("mine")

    def link(out):
        out.symlink_to(tmp_path)

    for appear in (folder, file, link):
        for overwrite in (False, True):
            out = tmp_path / f"{appear.__name__}_{overwrite}"
            racing(out, overwrite, appear)
            assert os.path.lexists(out) and not (out / "new.txt").exists()
    assert all(not p.name.startswith(".") for p in tmp_path.iterdir())  # no staging or lock left

    empty = tmp_path / "empty"  # an empty directory made meanwhile is replaced: nothing is lost
    with staged_output(empty) as staging:
        (staging / "new.txt").write_text("new")
        empty.mkdir()
    assert _names(empty) == ["new.txt"]


def test_prepare_overwrite_keeps_a_folder_that_appeared_during_the_build(
    scenes, tmp_path, monkeypatch, capsys
):
    import mpcc.data.build

    out = tmp_path / "out"
    save_stats = mpcc.data.build.save_stats

    def meanwhile(*args, **kwargs):
        out.mkdir()
        (out / "precious.txt").write_text("mine")
        return save_stats(*args, **kwargs)

    monkeypatch.setattr(mpcc.data.build, "save_stats", meanwhile)
    argv = ["prepare", "train", "--annotations", str(scenes / "instances.json"), "--images"]
    assert main([*argv, str(scenes / "images"), "--out", str(out), "--overwrite", "--num-proc", "1"]) == 2
    assert "mpcc did not write" in capsys.readouterr().err
    assert _names(out) == ["precious.txt"] and _names(tmp_path) == ["out"]


def test_a_replacement_interrupted_between_its_renames_puts_the_old_output_back(tmp_path, monkeypatch):
    import mpcc.outputs.staging

    out = tmp_path / "out"
    with staged_output(out) as staging:
        (staging / "old.txt").write_text("old")
    rename, calls = os.rename, []

    def interrupted(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # the old output is aside, the new one not yet in
            assert not os.path.lexists(out) and Path(src).name.startswith(".out.")
            raise KeyboardInterrupt
        rename(src, dst)

    monkeypatch.setattr(mpcc.outputs.staging.os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt), staged_output(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert calls[0][0] == "out" and calls[0][1].startswith(".out.old.") and calls[2] == (calls[0][1], "out")
    assert _names(tmp_path) == ["out"] and _names(out) == ["old.txt"]


# A process that writes `out` through staged_output and waits for a line on stdin ("hold"), kills itself
# with SIGKILL ("kill"), or waits without taking the lock, as a cache writer ("cache").
HOLDER = """
import os, signal, sys
from mpcc.outputs.staging import staged_output
out, mode = sys.argv[1], sys.argv[2]
with staged_output(out, first_wins=mode == "cache") as staging:
    (staging / "weights.bin").write_bytes(b"w" * 1000)
    print(staging, flush=True)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.readline()
"""


@contextlib.contextmanager
def _writer(out: Path, mode: str = "hold"):
    """A running writer of `out` (in its block): (process, its staging directory); it finishes on exit."""
    command = [sys.executable, "-c", HOLDER, str(out), mode]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield process, Path(process.stdout.readline().strip())
    finally:
        process.communicate("done\n", timeout=60)


def test_a_second_writer_of_one_output_is_refused_naming_the_first(scenes, tmp_path, capsys):
    out = tmp_path / "out"
    with _writer(out) as (first, staging):
        pid = f"pid {first.pid} on "
        with pytest.raises(OutputExistsError, match=pid):
            check_output(out)
        with pytest.raises(OutputBusyError, match=pid), staged_output(out):
            pass
        with pytest.raises(OutputBusyError, match=pid):
            lock_output(out)
        argv = ["prepare", "train", "--annotations", str(scenes / "instances.json"), "--images"]
        assert main([*argv, str(scenes / "images"), "--out", str(out), "--overwrite"]) == 2
        assert main(["eval", "--model", "tiny:qwen2_vl", "--data", str(scenes), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count(pid) == 2 and "being written by another mpcc process" in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".out.lock", staging.name])  # none ours
    assert first.returncode == 0 and _names(out) == ["weights.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_one_process_holds_an_output_lock_once(tmp_path):
    out = tmp_path / "run"
    lock = lock_output(out)
    assert lock_output(out) is lock  # again in the same process: the same lock
    check_output(out)  # held by this process: not a conflict
    lock.release()
    assert list(tmp_path.iterdir()) == []
    lock = lock_output(out)
    del lock  # dropped: released
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- killed runs (3)


def test_staging_of_killed_runs_is_removed_by_the_next_run_and_others_are_kept(tmp_path, caplog):
    out = tmp_path / "out"
    with _writer(out, "cache") as (alive, running), caplog.at_level(logging.WARNING, "mpcc.outputs"):
        command = [sys.executable, "-c", HOLDER, str(out), "kill"]
        killed = subprocess.run(command, capture_output=True, text=True)
        assert killed.returncode == -signal.SIGKILL
        dead = Path(killed.stdout.strip())
        assert (dead / "weights.bin").is_file()
        owner = json.loads((dead / MARKER).read_text())
        elsewhere = tmp_path / ".out.0123abcd"  # a run on another host, whose pids mean nothing here
        shutil.copytree(dead, elsewhere)
        (elsewhere / MARKER).write_text(json.dumps({**owner, "host": "another-host"}))
        unknown = tmp_path / ".out.4567cdef"  # no owner record: not known to be mpcc's
        unknown.mkdir()
        with staged_output(out) as staging:
            (staging / "weights.bin").write_bytes(b"new")
        assert not dead.exists() and running.is_dir() and elsewhere.is_dir() and unknown.is_dir()
        assert f"removing {dead}, left by process {owner['pid']} of this host" in caplog.text
        assert str(running) not in caplog.text and str(elsewhere) not in caplog.text
    assert alive.returncode == 0 and (out / "weights.bin").read_bytes() == b"new"  # the cache kept ours
    assert sorted(p.name for p in tmp_path.iterdir()) == [elsewhere.name, unknown.name, "out"]


def test_a_previous_output_left_aside_by_a_killed_replacement_is_kept_and_reported(tmp_path, caplog):
    out = tmp_path / "out"
    aside = tmp_path / ".out.old.0123abcd"  # killed between setting the old output aside and removing it
    aside.mkdir()
    (aside / "mpcc_build.json").write_text("{}")
    with caplog.at_level(logging.WARNING, "mpcc.outputs"), staged_output(out):
        pass
    assert aside.is_dir() and f"{aside} is a previous out set aside" in caplog.text


# --------------------------------------------------------------------------- permissions (4)


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_get_the_modes_of_the_umask(tmp_path, mask):
    out = tmp_path / "out"
    with _umask(mask), staged_output(out) as staging:
        os.chmod(staging, 0o700)  # as mkdtemp makes it
        (staging / "sub").mkdir(mode=0o700)
        for name, mode in [("weights", 0o600), ("sub/weights", 0o600), ("run.sh", 0o700)]:
            os.close(os.open(staging / name, os.O_CREAT | os.O_WRONLY, mode))  # as tempfile / safetensors
    for path, mode in [(out, 0o777), (out / "sub", 0o777), (out / "run.sh", 0o777)]:
        assert _mode(path) == mode & ~mask, path
    for path in (out / "weights", out / "sub" / "weights", out / MARKER):
        assert _mode(path) == 0o666 & ~mask, path


def test_a_cached_tiny_model_is_readable_as_the_umask_says(tmp_path):
    from mpcc.models import ensure_tiny_model

    with _umask(0o022):
        model = ensure_tiny_model("qwen2_5_vl", tmp_path)
    assert _mode(model) == 0o755 and _mode(model / "model.safetensors") == 0o644  # safetensors writes 0600
    assert all(_mode(p) == 0o644 for p in model.iterdir())


# ------------------------------------------------------------------------------------------ other


def test_output_errors_are_mpcc_errors():
    for error in (OutputExistsError, OutputBusyError):
        assert issubclass(error, MpccError) and issubclass(error, ValueError)


def test_write_text_atomic_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "items.json"
    write_text_atomic(path, "first\n")
    write_text_atomic(path, "second\n")
    assert path.read_text() == "second\n" and _names(tmp_path) == ["items.json"]
    with pytest.raises(TypeError):
        write_text_atomic(path, b"not text")
    assert path.read_text() == "second\n" and _names(tmp_path) == ["items.json"]


def test_tiny_model_output_is_staged_and_never_replaces_user_files(tmp_path):
    """`mpcc tiny-model --out` follows the same rules: a folder holding user files is refused (kept),
    also with --overwrite; a previous tiny model is replaced with --overwrite; weights follow the umask."""
    from mpcc.cli import main

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "precious.txt").write_text("keep")
    assert main(["tiny-model", "--out", str(occupied)]) == 2
    assert main(["tiny-model", "--out", str(occupied), "--overwrite"]) == 2
    assert (occupied / "precious.txt").read_text() == "keep" and len(list(occupied.iterdir())) == 1
    out = tmp_path / "tiny"
    old = os.umask(0o022)
    try:
        assert main(["tiny-model", "--out", str(out)]) == 0
        assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644
        assert main(["tiny-model", "--out", str(out)]) == 2  # exists: not replaced without --overwrite
        assert main(["tiny-model", "--out", str(out), "--overwrite", "--seed", "1"]) == 0
    finally:
        os.umask(old)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging or lock left behind


def test_an_appended_file_cut_by_a_kill_keeps_its_complete_records(tmp_path):
    """The predictions and grounding files are appended to as a run goes: a line cut by a kill is
    dropped from the file, so the next record appended starts on its own line and reads back."""
    from mpcc.files import read_appended

    path = tmp_path / "records.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n[3]\n{"other": 4}\n{"id": 5, "ha')
    assert read_appended(path, ("id",)) == [{"id": 1}, {"id": 2}]
    with open(path, "a") as f:
        f.write('{"id": 6}\n')
    assert read_appended(path, ("id",)) == [{"id": 1}, {"id": 2}, {"id": 6}]
    assert read_appended(tmp_path / "absent.jsonl", ("id",)) == []
