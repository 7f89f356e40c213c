"""Input files read whole, within a size cap, so that a wrong path (/dev/zero, a huge file) fails in one
line instead of filling memory; YAML without aliases, whose expansion can do the same ("billion laughs");
and the one streamed sha256 of a file that build records, imports and the weights fingerprint use.

Recipes and config files, written by hand, may hold up to CONFIG_CAP; data files (annotations, traces,
predictions, records) up to $MPCC_MAX_INPUT_MB MiB. Only the standard library and PyYAML are imported:
the launchers read recipes through here before Accelerate starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from mpcc.errors import ConfigError, InputError

CONFIG_CAP = 16 << 20
CAP_ENV, DEFAULT_CAP_MB = "MPCC_MAX_INPUT_MB", 2048  # COCO train2017's instances json is about 450 MB
_CHUNK = 1 << 20


def data_cap() -> int:
    """The cap on data files in bytes: $MPCC_MAX_INPUT_MB MiB, by default 2048."""
    text = os.environ.get(CAP_ENV) or str(DEFAULT_CAP_MB)
    if not text.isdigit() or int(text) == 0:
        raise ConfigError(f"${CAP_ENV}={text!r}: expected a positive whole number of MiB")
    return int(text) << 20


def _too_large(path: Path, what: str, cap: int | None) -> InputError:
    limit = f"the {(cap or data_cap()) / (1 << 20):g} MiB cap on"
    if cap is None:
        return InputError(f"{path}: {what}, over {limit} input files (raise it with ${CAP_ENV}=MiB)")
    return InputError(f"{path}: {what}, over {limit} recipes and config files")


def read_bytes(path: str | Path, cap: int | None = None) -> bytes:
    """The file's bytes, at most `cap` (default: the data cap) or InputError. A regular file is measured
    first; anything else (a pipe, /dev/zero, whose size says nothing) is read up to the cap."""
    path, limit = Path(path), cap or data_cap()
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        regular = stat.S_ISREG(info.st_mode)
        if regular and info.st_size > limit:
            raise _too_large(path, f"{info.st_size:,} bytes", cap)
        chunks, size = [], 0
        while chunk := f.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise _too_large(path, "growing as it is read" if regular else "not a regular file", cap)
            chunks.append(chunk)
    return b"".join(chunks)


def read_text(path: str | Path, cap: int | None = None) -> str:
    """The file as UTF-8 text, within the cap (read_bytes)."""
    return read_bytes(path, cap).decode("utf-8")


def read_json(path: str | Path, cap: int | None = None) -> Any:
    """The file's JSON value, within the cap (read_bytes); json.JSONDecodeError as json.loads raises it."""
    return json.loads(read_bytes(path, cap))


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (`*name`): a few nested ones expand to billions of nodes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not supported", mark)
        return super().compose_node(parent, index)


def read_yaml(path: str | Path) -> Any:
    """A hand-written YAML file (a recipe, a --config file), within CONFIG_CAP and without aliases; what
    is not YAML is a one-line ConfigError naming the file (and the line). OSError as open raises it."""
    data = read_bytes(path, CONFIG_CAP)
    try:
        return yaml.load(data.decode("utf-8"), Loader=_NoAliasLoader)  # a SafeLoader: plain data only
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e})") from e
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: {where}{e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {e}") from e


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's whole content, streamed (no cap: nothing is held in memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
