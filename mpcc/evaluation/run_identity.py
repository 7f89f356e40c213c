"""What identifies an eval run, so that resuming only ever continues the *same* run.

`mpcc eval` appends predictions as it goes and a rerun into the same `--out` generates only what is
missing. That is right only when everything that shapes a prediction is unchanged: the model (its path
and a fingerprint of its weights files, or a served model's name and endpoint URL), the data (the build
record, or a saved dataset's fingerprint), the prompt version, formats, limit, samples, seed, decoding,
backend and diagnostics. These are stored in its record (mpcc.records.EvalRun, `eval_run.json`) beside
the predictions; a rerun with any of them changed is refused with what differs, until `--overwrite`
(start over) or another `--out`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path

from mpcc.data.prompts import PROMPT_VERSION
from mpcc.errors import InputError
from mpcc.evaluation.config import EvalConfig
from mpcc.files import write_text_atomic
from mpcc.inputs import file_sha256, read_bytes, read_json
from mpcc.outputs.checks import check_output
from mpcc.outputs.marker import mark_output
from mpcc.records import (
    BUILD_FILE,
    EVAL_RUN_FILE,
    RECORD_KINDS,
    EvalRun,
    json_values,
    read_eval_run,
    write_eval_run,
)

KIND = RECORD_KINDS[EVAL_RUN_FILE]  # what its marker records: --overwrite replaces only an output of its kind
WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
DIGESTS_FILE = ".mpcc-weights-sha256.json"  # beside the weights: {file: [size, mtime_ns, sha256]}


def weights_fingerprint(path: str | Path) -> str | None:
    """sha256 over each weights file's name, size and sha256 of its whole content (a change anywhere,
    e.g. a merged LoRA, is seen; a copy is the same); None for a Hub name, identified by its name alone.
    The files' digests are cached beside them for their (size, mtime_ns), so a rerun reads nothing
    again; a folder that is not writable is hashed every time."""
    path = Path(path)
    if not path.is_dir():
        return None
    try:
        cached = read_json(path / DIGESTS_FILE)
    except (OSError, ValueError):
        cached = {}
    digests, digest = {}, hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.suffix in WEIGHTS_SUFFIXES and p.is_file()):
        name, stat = file.relative_to(path).as_posix(), file.stat()
        known = cached.get(name) if isinstance(cached, dict) else None
        if not (isinstance(known, list) and known[:2] == [stat.st_size, stat.st_mtime_ns]):
            known = [stat.st_size, stat.st_mtime_ns, file_sha256(file)]
        digests[name] = known
        digest.update(f"{name}:{known[0]}:{known[2]}\n".encode())
    if digests != cached:
        with contextlib.suppress(OSError):
            write_text_atomic(path / DIGESTS_FILE, json.dumps(digests, indent=1) + "\n")
    return digest.hexdigest()


def evaluated(identity: EvalRun, model: str | Path) -> bool:
    """Whether the run of `identity` evaluated `model`: the same weights (a local folder), else name."""
    if Path(model).is_dir():
        return identity.weights is not None and identity.weights == weights_fingerprint(model)
    return identity.model == str(model)


def data_fingerprint(data: str | Path) -> str:
    """sha256 of the build record (an mpcc build), of a saved dataset's state files, or of a JSONL file
    (the images it names are identified by their paths in it)."""
    data = Path(data)
    if data.is_file():
        return file_sha256(data)
    files = [data / BUILD_FILE] if (data / BUILD_FILE).is_file() else sorted(data.rglob("state.json"))
    digest = hashlib.sha256()
    for file in files:
        digest.update(read_bytes(file))
    return digest.hexdigest()


def run_identity(
    model: str, model_path: str | None, data: str | Path, config: EvalConfig, endpoint: str | None = None
) -> EvalRun:
    """`model` as given (a local path made absolute), `model_path` where its files are (tiny:<arch> is
    built into the cache; None for a served model); the data by content, so a moved build is the same
    data. A served model (openai:NAME) is its name and its `endpoint`'s base URL: never the API key."""
    served = {"endpoint": endpoint} if endpoint is not None else {}
    return EvalRun(
        model=str(Path(model).resolve()) if Path(model).exists() else model,
        weights=weights_fingerprint(model_path) if model_path is not None else None,
        settings={
            "data": data_fingerprint(data),
            "prompt_version": PROMPT_VERSION,
            **served,
            **json_values(dataclasses.asdict(config)),
        },
    )


def check_claim(out: Path, identity: EvalRun, overwrite: bool) -> None:
    """Refuse an `out` this run may not write: one holding another eval run (unless `overwrite`), or
    anything but an eval run (mpcc.outputs' rules: nothing of the user's is written into or replaced)."""
    if overwrite or not (out / EVAL_RUN_FILE).is_file():
        check_output(out, overwrite, kind=KIND)
        return
    try:
        before = read_eval_run(out).to_json()
    except InputError as e:
        raise InputError(f"{e}; start over with --overwrite") from e
    changed = [
        f"{key}: {before.get(key)!r} -> {value!r}"
        for key, value in identity.to_json().items()
        if before.get(key) != value
    ]
    if changed:
        raise InputError(
            f"{out} holds another eval run ({'; '.join(changed)}): resuming would report its predictions "
            "under the new settings; start over with --overwrite or choose another --out"
        )


def claim(out: Path, identity: EvalRun) -> None:
    """Make `out` this run's (after check_claim, once the run has started): its marker and record."""
    out.mkdir(parents=True, exist_ok=True)
    mark_output(out, KIND)
    if not (out / EVAL_RUN_FILE).is_file():
        write_eval_run(out, identity)
