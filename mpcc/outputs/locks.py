"""One writer per output: an exclusive `flock` on `.{name}.lock` beside `out`, held by one process (the
file goes when the lock is released; a kill releases it too). A process holds a lock once: taking it
again is no conflict. Where no lock can be taken (a read-only parent, a filesystem without locks) the
write goes ahead with a warning."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import weakref
from collections.abc import Iterable
from pathlib import Path

from mpcc.errors import ConfigError, MpccError
from mpcc.outputs.overlap import check_inputs

logger = logging.getLogger(__name__)


class OutputBusyError(ConfigError):
    """Another process is writing the same output."""


def _lock_path(out: Path) -> Path:
    out = Path(os.path.abspath(out))
    return out.parent.resolve() / f".{out.name}.lock"


class _Lock:
    """An exclusive flock on `out`'s lock file, for this process until `release` (or garbage collection)."""

    def __init__(self, out: Path):
        self.path, self.fd, self.pid = _lock_path(out), None, os.getpid()
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:  # e.g. a read-only parent holding a writable `out`: write, unguarded
                logger.warning("cannot lock %s (%s): concurrent writers will not be detected", self.path, e)
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "not yet recorded"
                os.close(fd)
                raise OutputBusyError(
                    f"{out} is being written by another mpcc process (pid {holder}; lock {self.path}): "
                    "wait for it to finish, or choose another output"
                ) from None
            except OSError as e:  # a filesystem without locks
                os.close(fd)
                logger.warning("cannot lock %s (%s): concurrent writers will not be detected", self.path, e)
                return
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            os.close(fd)  # its holder removed it meanwhile: lock the file now there
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None and self.pid == os.getpid():  # not in a forked child
            self.path.unlink(missing_ok=True)  # while still held, so no one locks a file that goes
            os.close(self.fd)
            self.fd = None
        if _held.get(self.path) is self:
            del _held[self.path]

    def __del__(self):
        with contextlib.suppress(Exception):
            self.release()


_held: weakref.WeakValueDictionary[Path, _Lock] = weakref.WeakValueDictionary()  # by this process


def holds(out: str | Path) -> bool:
    """Whether this process holds the lock on writing `out`."""
    return _lock_path(Path(out)) in _held


def check_free(out: str | Path, error: type[MpccError]) -> None:
    """Fail with `error` (naming the holder) when another process holds the lock on writing `out`; only
    a check: the writer takes the lock for the writing."""
    out = Path(out)
    if holds(out) or not out.parent.is_dir():
        return
    try:
        _Lock(out).release()
    except OutputBusyError as e:
        raise error(str(e)) from None


def lock_output(out: str | Path, inputs: Iterable[str | Path | None] = ()) -> _Lock:
    """Check `inputs` (check_inputs) and hold the lock on writing `out` until the returned lock is
    released or dropped (a local variable: when its function returns). A lock this process already
    holds is returned again."""
    out = Path(out)
    check_inputs(out, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = _held.get(_lock_path(out))
    if lock is None:
        lock = _Lock(out)
        _held[lock.path] = lock
    return lock
