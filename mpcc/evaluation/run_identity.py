"""What identifies an eval run, so that resuming only ever continues the *same* run.

`mpcc eval` appends predictions as it goes and a rerun into the same `--out` generates only what is
missing. That is right only when everything that shapes a prediction is unchanged: the model (its path
and a fingerprint of its weights files), the data (the build record, or a saved dataset's
fingerprint), the prompt version, formats, limit, samples, seed, decoding, backend and diagnostics.
These are stored in `eval_run.json` beside the predictions; a rerun with any of them changed is refused
with what differs, until `--overwrite` (start over) or another `--out`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from mpcc.data.prompts import PROMPT_VERSION
from mpcc.data.render import BUILD_FILE
from mpcc.errors import InputError
from mpcc.evaluation.config import EvalConfig
from mpcc.inputs import read_bytes, read_json
from mpcc.outputs import write_text_atomic

RUN_FILE = "eval_run.json"
WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_EDGE = 1 << 20  # bytes hashed at each end of a weights file


def weights_fingerprint(path: str | Path) -> str | None:
    """sha256 over each weights file's name, size and first and last MiB (a retrained checkpoint differs
    there; a copy does not); None for a Hub name, identified by its name alone."""
    path = Path(path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.suffix in WEIGHTS_SUFFIXES and p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path)}:{size}".encode())
        with open(file, "rb") as f:
            digest.update(f.read(_EDGE))
            f.seek(max(0, size - _EDGE))
            digest.update(f.read(_EDGE))
    return digest.hexdigest()


def data_fingerprint(data: str | Path) -> str:
    """sha256 of the build record (an mpcc build) or of a saved dataset's state files."""
    data = Path(data)
    files = [data / BUILD_FILE] if (data / BUILD_FILE).is_file() else sorted(data.rglob("state.json"))
    digest = hashlib.sha256()
    for file in files:
        digest.update(read_bytes(file))
    return digest.hexdigest()


def run_identity(model: str, model_path: str, data: str | Path, config: EvalConfig) -> dict:
    """`model` as given (a local path made absolute), `model_path` where its files are (tiny:<arch> is
    built into the cache); the data by content, so a moved build is the same data."""
    return {
        "model": str(Path(model).resolve()) if Path(model).exists() else model,
        "weights": weights_fingerprint(model_path),
        "data": data_fingerprint(data),
        "prompt_version": PROMPT_VERSION,
        **json.loads(json.dumps(dataclasses.asdict(config))),  # tuples as lists, as read back from JSON
    }


def claim(out: Path, identity: dict, produced: tuple[str, ...]) -> None:
    """Record `identity` for `out`, or check it against the run that already wrote there. `produced` are
    the files a run appends to: present without a record, they belong to a run we cannot identify."""
    record = out / RUN_FILE
    if record.is_file():
        try:
            before = read_json(record)
        except ValueError as e:
            raise InputError(f"{record}: unreadable ({e}); start over with --overwrite") from e
        changed = [
            f"{key}: {before.get(key)!r} -> {value!r}"
            for key, value in identity.items()
            if before.get(key) != value
        ]
        if changed:
            raise InputError(
                f"{out} holds another eval run ({'; '.join(changed)}): resuming would report its predictions "
                "under the new settings; start over with --overwrite or choose another --out"
            )
        return
    found = [name for name in produced if (out / name).exists()]
    if found:
        raise InputError(
            f"{out} holds {', '.join(found)} without {RUN_FILE} (an unidentified run): start over with "
            "--overwrite or choose another --out"
        )
    write_text_atomic(record, json.dumps(identity, indent=1) + "\n")
