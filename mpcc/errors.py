"""The errors mpcc raises on purpose: bad input, bad configuration, failed validation.

The `mpcc` command prints an `MpccError` as one line and exits with status 2, and so the machine's own
refusals (a full disk, a path it may not write: SYSTEM_ERRNOS); Ctrl-C prints one line and exits with
status 130. Any other exception is a bug or a library's failure and keeps its traceback. The subclasses
are also `ValueError`s, so callers that caught ValueError before keep working.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from collections.abc import Callable


class MpccError(Exception):
    """Base of every error mpcc raises on purpose; its message names what is wrong and where."""


class ConfigError(MpccError, ValueError):
    """An option, recipe or config file that cannot be used as given."""


class InputError(MpccError, ValueError):
    """Input data or files that are missing, malformed or do not fit together."""


class ValidationError(MpccError, ValueError):
    """A result that failed its own check (e.g. an export that does not reproduce its checkpoint)."""


class MissingInputError(InputError, FileNotFoundError):
    """An input path that does not exist; also a FileNotFoundError, as callers caught before."""


class UnreadableInputError(InputError, OSError):
    """An input that exists but cannot be loaded (a folder without a model config); also an OSError, as
    the loaders it wraps raise and callers caught before."""


# OSErrors from the machine rather than from mpcc: no space, no permission, a file where a folder must be.
SYSTEM_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS}
    | {errno.ENOTDIR, errno.EISDIR, errno.EEXIST}
)
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust libraries (safetensors) report one


def system_error(error: BaseException) -> OSError | None:
    """The OSError of SYSTEM_ERRNOS that `error` is or comes from (libraries wrap them), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in SYSTEM_ERRNOS:
            return error
        match = None if isinstance(error, OSError) else _RUST_OS_ERROR.search(str(error))
        if match and int(match[1]) in SYSTEM_ERRNOS:
            return OSError(int(match[1]), os.strerror(int(match[1])))
        error = error.__cause__ or error.__context__
    return None


def _describe(error: OSError, output: object) -> str:
    """`path: cause`; without a path (a write() on a full disk has none), `cause writing OUTPUT`."""
    cause = error.strerror or str(error)
    cause = cause[:1].lower() + cause[1:]
    if isinstance(error, FileExistsError) and error.filename and not os.path.isdir(error.filename):
        cause = "exists and is not a folder"  # mkdir's EEXIST for a file in the way
    if error.filename is None:
        return f"{cause} writing {output}" if output is not None else cause
    return f"{error.filename}: {cause}" + (f" ({error.filename2})" if error.filename2 else "")


def run_command(
    run: Callable[[], int], program: str, verbose: bool, output: Callable[[], object] = lambda: None
) -> int:
    """`run()`, its expected failures as one line (with `verbose`: after the traceback): an MpccError or
    a system error (status 2; `output()` is the folder it writes, named when the error has no path),
    Ctrl-C (`interrupted`, status 130; outputs are staged, so nothing partial is left)."""
    try:
        return run()
    except KeyboardInterrupt:
        if verbose:
            traceback.print_exc()
        print(f"{program}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if isinstance(e, MpccError):
            message = str(e)
        elif (cause := system_error(e)) is not None:
            message = _describe(cause, output())
        else:
            raise
        if verbose:  # where it was raised, too
            traceback.print_exception(e)
        print(f"{program}: error: {message}", file=sys.stderr)
        return 2
