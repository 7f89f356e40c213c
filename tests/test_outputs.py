"""mpcc.outputs: staged outputs appear whole or not at all, and replace an existing output only when asked."""

import shutil

import pytest

from mpcc.errors import InputError, MpccError
from mpcc.outputs import OutputExistsError, check_output, staged_output, write_text_atomic


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_success_renames_the_staging_directory_into_place(tmp_path):
    out = tmp_path / "sub" / "out"
    with staged_output(out) as staging:
        assert staging.parent == out.parent and staging.name.startswith(".out.")
        assert not any(staging.iterdir())
        (staging / "data.txt").write_text("new")
        assert not out.exists()  # nothing visible until the block succeeds
    assert (out / "data.txt").read_text() == "new"
    assert _names(out.parent) == ["out"]
    (tmp_path / "plain").mkdir()
    assert out.stat().st_mode == (tmp_path / "plain").stat().st_mode  # the umask's, not mkdtemp's 0700


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

    check_output(out, overwrite=True)
    with staged_output(out, overwrite=True) as staging:
        (staging / "b.txt").write_text("b")
    assert _names(tmp_path) == ["out"] and _names(out) == ["b.txt"]

    file = tmp_path / "file"
    file.write_text("not a folder")
    with pytest.raises(OutputExistsError):
        check_output(file)
    with staged_output(file, overwrite=True) as staging:
        (staging / "c.txt").write_text("c")
    assert _names(file) == ["c.txt"]


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


def test_output_errors_are_mpcc_errors():
    assert issubclass(OutputExistsError, MpccError) and issubclass(OutputExistsError, ValueError)


def test_write_text_atomic_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "items.json"
    write_text_atomic(path, "first\n")
    write_text_atomic(path, "second\n")
    assert path.read_text() == "second\n" and _names(tmp_path) == ["items.json"]
    with pytest.raises(TypeError):
        write_text_atomic(path, b"not text")
    assert path.read_text() == "second\n" and _names(tmp_path) == ["items.json"]
