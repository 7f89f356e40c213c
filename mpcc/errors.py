"""The errors mpcc raises on purpose: bad input, bad configuration, failed validation.

The `mpcc` command prints an `MpccError` as one line and exits with status 2; any other exception is a
bug or a library's failure and keeps its traceback. The subclasses are also `ValueError`s, so callers
that caught ValueError before keep working.
"""

from __future__ import annotations

import sys
import traceback


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


def report(error: MpccError, program: str, verbose: bool) -> int:
    """A deliberate error as a person reads it: one line naming the program, the traceback only when
    `verbose`; the exit status 2."""
    if verbose:  # where it was raised, too
        traceback.print_exception(error)
    print(f"{program}: error: {error}", file=sys.stderr)
    return 2
