"""An output is never an input: `out` may not be, contain or lie inside anything the command reads."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path

from mpcc.errors import ConfigError, MpccError


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
