"""Files that readers see whole: text replaced through a hidden temporary file, and the
JSON-lines files a run appends to as it goes (and resumes from), read back without a line a kill cut."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

from mpcc.inputs import read_text

logger = logging.getLogger(__name__)


def hidden(path: Path, kind: str = "") -> Path:
    """A new hidden name beside `path`, `.{name}.{kind}XXXXXXXX`: a staging directory, a previous output
    set aside (kind `old.`), a temporary file. mpcc.outputs.staging finds its leftovers by this form."""
    return path.with_name(f".{path.name}.{kind}{uuid.uuid4().hex[:8]}")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a hidden temporary file beside it: readers see the old content or
    the new, never a part of it."""
    path = Path(path)
    tmp = hidden(path)
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
