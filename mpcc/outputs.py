"""Outputs appear whole or not at all, and one rule says when an existing output may be replaced.

A folder (a dataset, an exported model, a cached tiny model) is written into a hidden staging directory
beside its destination and renamed into place once complete; a single file likewise through a hidden
temporary file. So a failed or killed run never leaves a partial output that a later command would
read as finished, and the rename stays on one filesystem, where it is atomic. Staging names are
`.{name}.XXXX`, so what a killed run left behind is recognisable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from mpcc.errors import ConfigError, MpccError

logger = logging.getLogger(__name__)


class OutputExistsError(ConfigError):
    """The output path holds something, and replacing it was not asked for."""


def _staging_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")


def _occupied(out: Path) -> bool:
    return out.exists() and (not out.is_dir() or any(out.iterdir()))


def check_output(
    out: str | Path, overwrite: bool = False, error: type[MpccError] = OutputExistsError
) -> None:
    """Refuse an `out` that holds anything but an empty directory, unless `overwrite`. Call it before the
    work, so a run does not fail at its end; `error` keeps the type an API documents (BuildError)."""
    if not overwrite and _occupied(Path(out)):
        raise error(f"{out} exists and is not empty: choose another output, or replace it with --overwrite")


@contextlib.contextmanager
def staged_output(out: str | Path, overwrite: bool = False, first_wins: bool = False) -> Iterator[Path]:
    """A new empty directory beside `out` to write the output into: renamed to `out` when the block
    succeeds, removed on any failure (`out` is then as it was).

    The rename replaces an empty directory, and anything with `overwrite`; otherwise it raises
    OutputExistsError (something was written to `out` meanwhile). With `first_wins`, for a cache that
    racing processes fill with the same content, the copy already there is kept and this one dropped.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_path(out)
    staging.mkdir()  # not mkdtemp: its mode 0700 would become `out`'s; this one follows the umask
    try:
        yield staging
        _place(staging, out, overwrite, first_wins)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _place(staging: Path, out: Path, overwrite: bool, first_wins: bool) -> None:
    if overwrite:
        _remove(out)
    try:
        os.rename(staging, out)  # atomic; replaces nothing but an empty directory
    except OSError:
        if first_wins and _occupied(out):
            logger.info("%s was written meanwhile by another process; keeping that copy", out)
            return
        check_output(out)
        raise


def _remove(out: Path) -> None:
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)
    else:
        out.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a hidden temporary file beside it: readers see the old content or
    the new, never a part of it."""
    path = Path(path)
    tmp = _staging_path(path)
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
