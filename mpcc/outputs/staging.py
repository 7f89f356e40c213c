"""Outputs appear whole or not at all: written into a hidden staging directory beside `out` and renamed
into place once complete; a previous output is set aside until the new one is in, and put back if it
does not get there. A later run removes the staging directories that ended processes left."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from mpcc.files import hidden
from mpcc.inputs import read_json
from mpcc.outputs.checks import OutputExistsError, obstacle, occupied
from mpcc.outputs.locks import holds, lock_output
from mpcc.outputs.marker import MARKER, mark_output, mark_staging, owner
from mpcc.outputs.modes import set_modes

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def staged_output(
    out: str | Path, overwrite: bool = False, first_wins: bool = False, kind: str | None = None
) -> Iterator[Path]:
    """A new directory beside `out` (holding only the marker) to write the output into: renamed to `out`
    when the block succeeds, removed on any failure (`out` is then as it was).

    `out` is replaced as mpcc.outputs' rules say (`kind`: only an output of that kind, which the marker
    records), else OutputExistsError (something was written to `out` meanwhile). With `first_wins`, for
    a cache that racing processes fill with the same content, the copy already there is kept and this
    one dropped.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = None if first_wins or holds(out) else lock_output(out)
    try:
        _remove_stale(out)
        staging = hidden(out)
        staging.mkdir()
        try:
            mark_staging(staging)
            yield staging
            _place(staging, out, overwrite, first_wins, kind)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        if lock is not None:
            lock.release()


def _place(staging: Path, out: Path, overwrite: bool, first_wins: bool, kind: str | None) -> None:
    set_modes(staging)
    mark_output(staging, kind)
    if first_wins:
        try:
            os.rename(staging, out)
        except OSError:
            if not occupied(out):
                raise
            logger.info("%s was written meanwhile by another process; keeping that copy", out)
        return
    problem = obstacle(out, overwrite, kind)
    if problem:
        raise OutputExistsError(f"{problem} (found when the output was complete)")
    old = hidden(out, "old.") if occupied(out) else None  # a previous output, with `overwrite`
    if old:
        os.rename(out, old)
    try:
        os.rename(staging, out)  # atomic; replaces nothing but an empty directory
    except BaseException as e:  # an interrupt too: the old output goes back
        if old:
            os.rename(old, out)
        if isinstance(e, OSError) and e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise OutputExistsError(
                f"{out} was written meanwhile by someone else; it is left as it is"
            ) from e
        raise
    if old:
        try:
            shutil.rmtree(old)
        except OSError as e:  # the new output is in place: say so, and what is left
            logger.warning("could not remove the previous %s, set aside as %s: %s", out.name, old, e)


def _remove_stale(out: Path) -> None:
    """Remove the staging directories beside `out` of ended processes of this host; warn of set-aside
    previous outputs (a replacement was killed between its renames)."""
    staging = re.compile(re.escape(f".{out.name}.") + "[0-9a-f]{8}")
    aside = re.compile(re.escape(f".{out.name}.old.") + "[0-9a-f]{8}")
    me = owner()
    for path in out.parent.iterdir():
        if path.is_symlink() or not path.is_dir():
            continue
        if aside.fullmatch(path.name):
            logger.warning("%s is a previous %s set aside by a run that did not finish", path, out.name)
            continue
        if not staging.fullmatch(path.name):
            continue
        try:
            found = read_json(path / MARKER)
        except (OSError, ValueError):
            continue  # not known to be ours
        if not isinstance(found, dict):
            continue
        pid = found.get("pid")
        if (found.get("host"), found.get("pid_namespace")) != (me["host"], me["pid_namespace"]):
            continue
        if isinstance(pid, int) and pid > 0 and not _alive(pid):
            logger.warning("removing %s, left by process %d of this host, which has ended", path, pid)
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True
