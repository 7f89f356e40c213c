"""May this command write `out`: not an input, nothing there that it may not replace, no other writer.
Called before the work, so a run does not fail at its end, and again (`obstacle`) when the output is
complete."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from mpcc.errors import ConfigError, MpccError
from mpcc.outputs.locks import check_free
from mpcc.outputs.marker import PREVIOUS_OUTPUT_FILES, output_kind
from mpcc.outputs.overlap import check_inputs


class OutputExistsError(ConfigError):
    """The output path holds something, and replacing it was not asked for (or is not allowed)."""


def check_output(
    out: str | Path,
    overwrite: bool = False,
    error: type[MpccError] = OutputExistsError,
    inputs: Iterable[str | Path | None] = (),
    kind: str | None = None,
) -> None:
    """Refuse `out` if it is or holds an input, holds what may not be replaced (see mpcc.outputs' rules;
    `kind`: only a previous output of that kind), or another process is writing it. Call it before the
    work, so a run does not fail at its end; `error` keeps the type an API documents (BuildError)."""
    out = Path(out)
    check_inputs(out, inputs, error)
    problem = obstacle(out, overwrite, kind)
    if problem:
        raise error(problem)
    check_free(out, error)


def obstacle(out: Path, overwrite: bool, kind: str | None = None) -> str | None:
    """Why `out` may not be replaced, or None."""
    if not occupied(out):
        return None
    if not overwrite:
        return f"{out} exists and is not empty: choose another output, or replace it with --overwrite"
    if out.is_dir() and not out.is_symlink():
        if any((out / name).is_file() for name in PREVIOUS_OUTPUT_FILES):
            found = output_kind(out)
            if kind is None or found in (None, kind):
                return None
            return (
                f"{out} is an mpcc {found} output: --overwrite here replaces only a previous {kind} output; "
                "remove it yourself or choose another output"
            )
        names = sorted(os.listdir(out))
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        what = f"a directory mpcc did not write (it holds {shown})"
    else:
        what = "a symlink" if out.is_symlink() else "a file"
    return (
        f"{out} is {what}: --overwrite replaces only an mpcc output (a directory holding one of "
        f"{', '.join(PREVIOUS_OUTPUT_FILES)}); remove it yourself or choose another output"
    )


def occupied(out: Path) -> bool:
    """Whether something is at `out`: anything but an empty directory."""
    empty_dir = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
    return os.path.lexists(out) and not empty_dir
