"""The lock (requirements.lock) that `make setup` installs: it must pin every dependency of pyproject.toml
within its range, and a lock that falls behind pyproject.toml stops the install with one line."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("lock_tool", ROOT / "tools" / "lock.py")
lock_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock_tool)


def test_the_lock_covers_pyproject(capsys):
    assert lock_tool.check() == 0, capsys.readouterr().err
    pins = lock_tool.read_lock()
    assert pins["torch"].endswith("+cpu")  # the README's CPU set-up
    assert pins["trl"].startswith("1.16.")  # inside the cap the prior-sampling overrides need


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (('"httpx>=0.28.1",', '"httpx>=0.28.1", "tabulate>=0.9",'), "tabulate is not in it"),
        (('"numpy>=2.4.6"', '"numpy>=99"'), "numpy==2.4.6 is outside >=99"),
        (('"ruff>=0.17.6"', '"ruff>=0.17.6", "freezegun"'), "freezegun is not in it"),
    ],
)
def test_a_lock_behind_pyproject_is_refused_in_one_line(tmp_path, capsys, edit, named):
    pyproject = tmp_path / "pyproject.toml"
    text = (ROOT / "pyproject.toml").read_text()
    assert edit[0] in text
    pyproject.write_text(text.replace(edit[0], edit[1], 1))
    lock = shutil.copy(ROOT / "requirements.lock", tmp_path / "requirements.lock")
    assert lock_tool.check(Path(lock), pyproject) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert named in line and "run `make lock`" in line


def test_a_missing_lock_says_how_to_make_one(tmp_path, capsys):
    assert lock_tool.check(tmp_path / "requirements.lock") == 1
    assert capsys.readouterr().err == "requirements.lock is missing: run `make lock`\n"


def test_a_malformed_pin_is_named_with_its_line(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("# header\naccelerate==1.16.0\ntorch>=2\n")
    with pytest.raises(SystemExit, match=r"requirements.lock:3: not a `name==version` pin: 'torch>=2'"):
        lock_tool.read_lock(lock)
