"""Progress of an annotation run: an append-only JSONL of teacher answers, one line per answer.

Each line is written and flushed as soon as its answer is verified, so a run killed at any moment
loses only the requests in flight; a re-run reads the file, skips what is there and appends the rest.
Lines are keyed by (ann_id, attempt): a key seen twice (e.g. two runs racing) counts once. A line cut
short by a kill is dropped (and cut off the file) on the next open. `run.json` beside it records what
the answers are for, so progress from another teacher, mode or dataset is never mixed in.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mpcc.errors import ConfigError, InputError
from mpcc.inputs import read_bytes, read_json

logger = logging.getLogger(__name__)

PROGRESS_FILE, PROGRESS_RUN_FILE = "progress.jsonl", "run.json"


def check_run(work_dir: Path, run: dict) -> None:
    """Create `work_dir` for `run`, or check that the progress already there was made for the same run."""
    file = work_dir / PROGRESS_RUN_FILE
    if file.is_file():
        saved = read_json(file)
        differ = {key: (saved.get(key), value) for key, value in run.items() if saved.get(key) != value}
        if differ:
            raise ConfigError(
                f"{work_dir} holds progress of another annotation run (was -> now: {differ}); "
                "remove that directory to start over, or pass another --work-dir"
            )
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(run, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class ProgressLog:
    """Records by ann_id (each a list ordered by attempt) plus an append handle; use as a context manager."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.records: dict[int, dict[int, dict]] = {}
        if self.path.is_file():
            self._load()
        self._file = None

    def _load(self) -> None:
        data = read_bytes(self.path)
        end = data.rfind(b"\n") + 1
        if end < len(data):
            logger.warning(
                "%s: dropping a partial last line (%d bytes) left by a killed run", self.path, len(data) - end
            )
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for number, line in enumerate(data[:end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = int(record["ann_id"]), int(record["attempt"])
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(f"{self.path}: line {number} is not a progress record ({e})") from e
            self._keep(key, record)

    def _keep(self, key: tuple[int, int], record: dict) -> bool:
        attempts = self.records.setdefault(key[0], {})
        if key[1] in attempts:
            return False
        attempts[key[1]] = record
        return True

    def attempts(self, ann_id: int) -> list[dict]:
        return [record for _, record in sorted(self.records.get(ann_id, {}).items())]

    def __enter__(self) -> ProgressLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()
        self._file = None

    def append(self, record: dict) -> None:
        """Keep and write one record (a repeated key is ignored), flushed to the OS before returning."""
        if self._keep((int(record["ann_id"]), int(record["attempt"])), record):
            self._file.write(json.dumps(record, sort_keys=True) + "\n")
            self._file.flush()
