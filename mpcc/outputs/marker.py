"""`.mpcc-output`: what says a folder was written by mpcc, by which command, and of which kind. In a
staging directory it also names its owner (pid, host, pid namespace), so a later run can tell a
leftover of an ended process from the work of a live one (mpcc.outputs.staging)."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import mpcc
from mpcc.inputs import read_json
from mpcc.records import RECORD_KINDS

MARKER = ".mpcc-output"
# What makes a folder a previous mpcc output, which --overwrite may replace: the marker or a record.
PREVIOUS_OUTPUT_FILES = (MARKER, *RECORD_KINDS)


def mark_output(folder: Path, kind: str | None = None) -> None:
    """The finished output's marker: the command, its kind if named and the mpcc version (the same bytes
    every run)."""
    kinds = {"kind": kind} if kind else {}
    _write_marker(folder, {"written_by": _command(), **kinds, "mpcc_version": mpcc.__version__})


def mark_staging(folder: Path) -> None:
    """A staging directory's marker: the command and this process as its owner."""
    _write_marker(folder, {"written_by": _command(), **owner()})


def _write_marker(folder: Path, record: dict) -> None:
    (folder / MARKER).write_text(json.dumps(record) + "\n", encoding="utf-8")


def output_kind(out: Path) -> str | None:
    """The kind of mpcc output `out` is: its marker's, else its record's; None when not recorded."""
    try:
        kind = read_json(out / MARKER).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    return kind or next((k for name, k in RECORD_KINDS.items() if (out / name).is_file()), None)


def owner() -> dict:
    """This process, as a staging directory's marker names its owner (pids mean something only within
    one pid namespace of one host)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = None
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_namespace": namespace}


def _command() -> str:
    """What wrote the output, e.g. `mpcc prepare`."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    name = program.parent.name if program.name == "__main__.py" else program.name
    return " ".join([name, *sys.argv[1:2]])
