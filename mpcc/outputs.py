"""Outputs appear whole or not at all, replace only what mpcc wrote, and have one writer at a time.

Every command that writes a directory (`mpcc prepare`, `merge-shards`, `annotate`, `eval`, `export`, the
tiny-model cache) follows these rules; this module is the one place they are implemented.

* Inputs. `out` must not be, contain, or lie inside one of the command's inputs, with or without
  `--overwrite` (paths compared once resolved; inputs that do not exist, such as a Hub id, are skipped).
  Every path-valued option of a command is an input (`option_inputs`), as are the models and runs
  the library functions name.
* Staging. A folder is written into a hidden staging directory `.{name}.XXXXXXXX` beside `out` and
  renamed into place once complete (one filesystem, so the rename is atomic); a failure removes it.
  A single file likewise goes through a hidden temporary file (`write_text_atomic`).
* Marker and owner. Each staging directory holds `.mpcc-output` (JSON: the command, and the owner's
  pid, host and pid namespace). A later run into the same `out` removes the staging directories whose
  owner ran on this host and has ended, with a warning; it keeps those of live processes, of other
  hosts, and any without an owner record. In the finished output the marker keeps only the command
  and the mpcc version (the same bytes every run).
* Replacing. Without `overwrite`, `out` must be absent or an empty directory, when the command starts
  and when the staging directory is renamed (the rename itself refuses a file, a symlink or a
  non-empty directory, so nothing written meanwhile is lost). With `overwrite`, it may also be a
  previous mpcc output: a directory (not a symlink) holding one of `PREVIOUS_OUTPUT_FILES` (the
  marker; `mpcc_build.json`: builds; `eval_run.json`: eval runs; `mpcc_run.json`: training outputs).
  A command that names its `kind` (eval, compare, export) replaces only an output of that kind: the
  marker records the kind, the records above stand for theirs, and a marker without one (written
  before kinds were recorded) stands for any. Anything else (a file, a symlink, another directory)
  is refused and left alone; outputs written before the marker existed without one of those records
  (exports) are removed by hand. The old output
  is renamed aside (`.{name}.old.XXXXXXXX`), the new one renamed in, then the old one deleted: an
  exception in between puts the old one back, a kill leaves it aside (the next run warns), never
  neither.
* One writer. Writing `out` takes an exclusive `flock` on `.{name}.lock` beside it (the file goes when
  the lock is released; a kill releases it too). `check_output` checks that no other process holds
  it, so a second writer fails at its start; `staged_output` holds it from before the staging
  directory exists until the rename (two runs that both passed their check meanwhile: the second
  fails there, before writing); `mpcc eval`, which appends to `out` over a long run, holds it until
  `run_eval` returns (`lock_output`). The loser fails with a message naming the holder's pid. A process
  holds a lock once: taking it again is no conflict. Caches with `first_wins` take no lock: racing
  writers of the same content are expected there. Where no lock can be taken (a read-only parent, a
  filesystem without locks) the write goes ahead with a warning.
* Permissions. Before the rename every directory is set to 0o777 & ~umask and every file to 0o666 &
  ~umask (0o777 & ~umask if executable), as if the user had created them: some writers (safetensors,
  anything using tempfile) create files readable by their owner only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
import uuid
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

import mpcc
from mpcc.errors import ConfigError, MpccError
from mpcc.inputs import read_json, read_text

logger = logging.getLogger(__name__)

MARKER = ".mpcc-output"
PREVIOUS_OUTPUT_FILES = (MARKER, "mpcc_build.json", "eval_run.json", "mpcc_run.json")
RECORD_KINDS = {"mpcc_build.json": "prepare", "eval_run.json": "eval", "mpcc_run.json": "train"}


class OutputExistsError(ConfigError):
    """The output path holds something, and replacing it was not asked for (or is not allowed)."""


class OutputBusyError(ConfigError):
    """Another process is writing the same output."""


# ------------------------------------------------------------------------------------------- checks


def check_inputs(out: str | Path, inputs: Iterable[str | Path | None], error: type[MpccError] = ConfigError):
    """Refuse an `out` that is, contains or lies inside one of `inputs` (None and absent paths skipped)."""
    target = Path(out).resolve()
    for given in inputs:
        if given is None or not os.path.lexists(given):
            continue
        source = Path(given).resolve()
        if target == source:
            relation = "is"
        elif target in source.parents:
            relation = "contains"
        elif source in target.parents:
            relation = "lies inside"
        else:
            continue
        raise error(f"the output {out} {relation} the input {given}: choose an output outside the inputs")


def option_inputs(*options) -> list[Path]:
    """Every path a command's parsed options (dataclasses) hold, its `out` aside: each is an input."""
    found = []
    for value in options:
        if dataclasses.is_dataclass(value):
            fields = dataclasses.fields(value)
            found += option_inputs(*(getattr(value, f.name) for f in fields if f.name != "out"))
        elif isinstance(value, tuple):
            found += option_inputs(*value)
        elif isinstance(value, Path):
            found.append(value)
    return found


def check_output(
    out: str | Path,
    overwrite: bool = False,
    error: type[MpccError] = OutputExistsError,
    inputs: Iterable[str | Path | None] = (),
    kind: str | None = None,
) -> None:
    """Refuse `out` if it is or holds an input, holds what may not be replaced (see the module's rules;
    `kind`: only a previous output of that kind), or another process is writing it. Call it before the
    work, so a run does not fail at its end; `error` keeps the type an API documents (BuildError)."""
    out = Path(out)
    check_inputs(out, inputs, error)
    problem = _obstacle(out, overwrite, kind)
    if problem:
        raise error(problem)
    if _lock_path(out) not in _held and out.parent.is_dir():
        try:
            _Lock(out).release()  # only a check: staged_output takes it for the writing
        except OutputBusyError as e:
            raise error(str(e)) from None


def _obstacle(out: Path, overwrite: bool, kind: str | None = None) -> str | None:
    """Why `out` may not be replaced, or None."""
    if not os.path.lexists(out) or _empty_dir(out):
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


def output_kind(out: Path) -> str | None:
    """The kind of mpcc output `out` is: its marker's, else its record's; None when not recorded."""
    try:
        kind = read_json(out / MARKER).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    return kind or next((k for name, k in RECORD_KINDS.items() if (out / name).is_file()), None)


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _occupied(out: Path) -> bool:
    return os.path.lexists(out) and not _empty_dir(out)


# -------------------------------------------------------------------------------------------- locks


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


# ---------------------------------------------------------------------------------- staged outputs


@contextlib.contextmanager
def staged_output(
    out: str | Path, overwrite: bool = False, first_wins: bool = False, kind: str | None = None
) -> Iterator[Path]:
    """A new directory beside `out` (holding only the marker) to write the output into: renamed to `out`
    when the block succeeds, removed on any failure (`out` is then as it was).

    `out` is replaced as the module's rules say (`kind`: only an output of that kind, which the marker
    records), else OutputExistsError (something was written to `out` meanwhile). With `first_wins`, for
    a cache that racing processes fill with the same content, the copy already there is kept and this
    one dropped.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = None if first_wins or _lock_path(out) in _held else lock_output(out)
    try:
        _remove_stale(out)
        staging = _hidden(out)
        staging.mkdir()
        try:
            _write_marker(staging, {"written_by": _command(), **_owner()})
            yield staging
            _place(staging, out, overwrite, first_wins, kind)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        if lock is not None:
            lock.release()


def _hidden(out: Path, kind: str = "") -> Path:
    return out.with_name(f".{out.name}.{kind}{uuid.uuid4().hex[:8]}")


def _place(staging: Path, out: Path, overwrite: bool, first_wins: bool, kind: str | None) -> None:
    set_modes(staging)
    mark_output(staging, kind)
    if first_wins:
        try:
            os.rename(staging, out)
        except OSError:
            if not _occupied(out):
                raise
            logger.info("%s was written meanwhile by another process; keeping that copy", out)
        return
    problem = _obstacle(out, overwrite, kind)
    if problem:
        raise OutputExistsError(f"{problem} (found when the output was complete)")
    old = _hidden(out, "old.") if _occupied(out) else None  # a previous output, with `overwrite`
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


def mark_output(folder: Path, kind: str | None = None) -> None:
    """The finished output's marker: the command, its kind if named and the mpcc version (the same bytes
    every run)."""
    kinds = {"kind": kind} if kind else {}
    _write_marker(folder, {"written_by": _command(), **kinds, "mpcc_version": mpcc.__version__})


def _write_marker(folder: Path, record: dict) -> None:
    (folder / MARKER).write_text(json.dumps(record) + "\n", encoding="utf-8")


def _command() -> str:
    """What wrote the output, e.g. `mpcc prepare`."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    name = program.parent.name if program.name == "__main__.py" else program.name
    return " ".join([name, *sys.argv[1:2]])


def _owner() -> dict:
    try:
        namespace = os.readlink("/proc/self/ns/pid")  # pids mean something only within one
    except OSError:
        namespace = None
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_namespace": namespace}


def _remove_stale(out: Path) -> None:
    """Remove the staging directories beside `out` of ended processes of this host; warn of set-aside
    previous outputs (a replacement was killed between its renames)."""
    staging = re.compile(re.escape(f".{out.name}.") + "[0-9a-f]{8}")
    aside = re.compile(re.escape(f".{out.name}.old.") + "[0-9a-f]{8}")
    me = _owner()
    for path in out.parent.iterdir():
        if path.is_symlink() or not path.is_dir():
            continue
        if aside.fullmatch(path.name):
            logger.warning("%s is a previous %s set aside by a run that did not finish", path, out.name)
            continue
        if not staging.fullmatch(path.name):
            continue
        try:
            owner = read_json(path / MARKER)
        except (OSError, ValueError):
            continue  # not known to be ours
        if not isinstance(owner, dict):
            continue
        pid = owner.get("pid")
        if (owner.get("host"), owner.get("pid_namespace")) != (me["host"], me["pid_namespace"]):
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


def _umask() -> int:
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def set_modes(root: Path) -> None:
    """The modes the user's umask gives new files and directories, for everything under `root`."""
    mask = _umask()
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                executable = os.stat(path).st_mode & 0o111
                os.chmod(path, (0o777 if executable else 0o666) & ~mask)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a hidden temporary file beside it: readers see the old content or
    the new, never a part of it."""
    path = Path(path)
    tmp = _hidden(path)
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_appended(path: str | Path, keys: tuple[str, ...]) -> list[dict]:
    """The complete records of a JSON-lines file a run appends to as it goes (and resumes from). A line
    cut by a kill (unreadable, or without one of `keys`) is dropped from the file, with a warning, so
    the next record appended starts on a line of its own and the cut one is made again."""
    path = Path(path)
    if not path.is_file():
        return []
    kept, records = [], []
    for line in read_text(path).splitlines():
        try:
            record = json.loads(line)
            if all(key in record for key in keys):
                records.append(record)
                kept.append(line)
                continue
        except (ValueError, TypeError):
            pass
        logger.warning("%s: dropping an unreadable line (a record cut short); it is made again", path)
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))
    return records
