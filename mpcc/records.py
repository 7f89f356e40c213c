"""The records mpcc writes beside its outputs, typed: one dataclass, one reader, one writer and one file
name each, so no module reads them by string key or spells their file names again.

* `BuildRecord` (`mpcc_build.json`): what a build (`mpcc prepare`, `merge-shards`, `annotate`) made,
  from what; `mpcc.data.render.load_dataset` and the commands that take a build read it.
* `TrainingRun` (`mpcc_run.json`): a training run's resolved settings, written into its output_dir at
  start, so a resume can tell the same run and `mpcc export` can describe any checkpoint.
* `EvalRun` (`eval_run.json`): what an `mpcc eval` output evaluated and how, so a rerun resumes only
  the same run and `mpcc export` can tell which model a report is about.

The files keep the JSON mpcc has always written, and a record read and written again gives the same
bytes, also one an earlier (or later) mpcc wrote: fields added since are optional, and keys a record
does not know (e.g. the `annotations_sha256` of early builds) are kept as they are in its `extra`.
Settings dumped whole from a configuration class (the build's, the trainer's, the evaluation's) stay
dicts: their typed form lives in the layer that defines them, above this module, and a copy here would
drift from it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from mpcc.errors import InputError
from mpcc.files import write_text_atomic
from mpcc.inputs import read_json

BUILD_FILE = "mpcc_build.json"
TRAINING_RUN_FILE = "mpcc_run.json"
EVAL_RUN_FILE = "eval_run.json"
# The kind of mpcc output each record stands for (mpcc.outputs.marker: --overwrite replaces only its kind).
RECORD_KINDS = {BUILD_FILE: "prepare", EVAL_RUN_FILE: "eval", TRAINING_RUN_FILE: "train"}


@dataclass(frozen=True)
class BuildRecord:
    """A build's record: its configuration, inputs (paths and content), prompt version and counts."""

    config: dict  # mpcc.data.build.BuildConfig as JSON: split, seed, mask, selection, formats, shard, ...
    annotations: str  # the COCO annotations file, absolute
    images_dir: str  # where the original images are (lazy builds render from them), absolute
    prompt_version: str
    num_rows: int
    rows_per_level: dict[str, int]
    rejected: dict[str, int]  # targets not asked about, by reason
    skipped: dict[str, int]  # annotations and images skipped, by reason
    thresholds: list[float]  # the difficulty score's level cuts (low, high)
    input_sha256: dict[str, str] | None = None  # input name -> sha256 of the file read (None: early builds)
    images_digest: str | None = None  # mpcc.data.build.digest_sum of the images shown (None: early builds)
    plan_skips: int | None = None  # shard builds: the skips found while planning the whole source
    merged_shards: int | None = None  # merged builds: how many shards
    annotation: dict | None = None  # annotated builds: the teacher's settings and counts
    extra: dict = dataclasses.field(default_factory=dict)  # keys of another mpcc version, kept as they are

    def __post_init__(self):
        missing = [key for key in ("split", "seed", "mask") if key not in self.config]
        if missing or not isinstance(self.config.get("mask"), dict) or "fill" not in self.config["mask"]:
            raise ValueError(f"config lacks {', '.join(missing) or 'mask.fill'}")

    def to_json(self) -> dict:
        return _to_json(self)

    @property
    def split(self) -> str:
        return self.config["split"]

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def mask(self) -> dict:
        """The mask settings (mpcc.data.masking.MaskSpec's fields)."""
        return self.config["mask"]

    @property
    def fill(self) -> str:
        """What hides the object, as the questions name it."""
        return self.mask["fill"]


@dataclass(frozen=True)
class RunDataset:
    """The data a training run reads: its path, and the build record found there (None: not a build)."""

    path: str
    build: BuildRecord | None


@dataclass(frozen=True)
class TrainingRun:
    """A training run's settings as JSON values. The parts are dumps of the run's configuration classes
    (mpcc.training.config.RunConfig, TRL's TrainingArguments with every *_token masked, TRL's
    ModelConfig), read by key."""

    mpcc_version: str
    run: dict
    trainer: dict
    model: dict
    dataset: RunDataset
    checkpoint_marker: bool = False  # its checkpoints are complete only once marked; older runs: False
    extra: dict = dataclasses.field(default_factory=dict)  # keys of another mpcc version, kept as they are

    def to_json(self) -> dict:
        return _to_json(self)


@dataclass(frozen=True)
class EvalRun:
    """What identifies an eval run: the model (as given, and its weights' fingerprint; None for a Hub
    name) and `settings`, everything else that shapes a prediction (the data's fingerprint, the prompt
    version, mpcc.evaluation.config.EvalConfig as JSON). On disk the settings sit beside the model."""

    model: str
    weights: str | None
    settings: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {"model": self.model, "weights": self.weights, **self.settings}


def json_values(value):
    """`value` (a dataclass's asdict, a settings dict) as a record holds it once read back from its file:
    tuples as lists, paths and other objects as their text."""
    return json.loads(json.dumps(value, default=str))


# -------------------------------------------------------------------------------------------- builds


def read_build(folder: str | Path) -> BuildRecord:
    """The record of the build in `folder`; InputError when there is none or it is not one."""
    file = Path(folder) / BUILD_FILE
    return _from_json(BuildRecord, _read(file, "an mpcc build record"), file)


def write_build(folder: str | Path, record: BuildRecord) -> None:
    """Write the record into the build directory `folder` (default=str: the annotation summary holds the
    teacher's settings as given)."""
    text = json.dumps(record.to_json(), indent=2, sort_keys=True, default=str) + "\n"
    write_text_atomic(Path(folder) / BUILD_FILE, text)


# ----------------------------------------------------------------------------------- training runs


def read_training_run(folder: str | Path) -> TrainingRun | None:
    """The record of the training run in `folder`; None when it holds none (not a training output, or
    one from before the record)."""
    file = Path(folder) / TRAINING_RUN_FILE
    if not file.is_file():
        return None
    return _from_json(TrainingRun, _read(file, "an mpcc training run record"), file)


def write_training_run(folder: str | Path, record: TrainingRun) -> Path:
    """Write the record into `folder` (created if needed; call on the main process only)."""
    file = Path(folder) / TRAINING_RUN_FILE
    file.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(file, json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n")
    return file


# --------------------------------------------------------------------------------------- eval runs


def read_eval_run(folder: str | Path) -> EvalRun:
    """The identity an `mpcc eval` output recorded; InputError when `folder` is no such output."""
    file = Path(folder) / EVAL_RUN_FILE
    data = _read(file, "an `mpcc eval` output's record")
    settings = {key: value for key, value in data.items() if key not in ("model", "weights")}
    return _from_json(EvalRun, {**data, "settings": settings}, file)


def write_eval_run(folder: str | Path, record: EvalRun) -> None:
    """Write the record into the eval output `folder`, its keys in the order run_identity gives them."""
    write_text_atomic(Path(folder) / EVAL_RUN_FILE, json.dumps(record.to_json(), indent=1) + "\n")


# ------------------------------------------------------------------------------------ JSON <-> typed


def _read(file: Path, what: str) -> dict:
    """The file's JSON object, or InputError naming the file and saying why it is not `what`."""
    try:
        data = read_json(file)
    except (OSError, ValueError) as e:
        raise InputError(f"{file}: not {what} ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise InputError(f"{file}: not {what} (a JSON {type(data).__name__}, not an object)")
    return data


def _from_json(cls, data: dict, file: Path, where: str = ""):
    """`cls` (a record dataclass) from its JSON object read from `file`: each field checked to hold its
    type's JSON form, nested records built the same way, fields with a default optional; keys without a
    field go to its `extra`, if it has one."""
    hints = typing.get_type_hints(cls)
    fields = [field for field in dataclasses.fields(cls) if field.name != "extra"]
    values = {}
    if len(fields) < len(dataclasses.fields(cls)):
        values["extra"] = {key: value for key, value in data.items() if key not in {f.name for f in fields}}
    for field in fields:
        name = f"{where}{field.name}"
        if field.name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise InputError(f"{file}: the record lacks {name!r}")
            continue
        values[field.name] = _typed(data[field.name], hints[field.name], file, name)
    try:
        return cls(**values)
    except ValueError as e:  # a record's own check (BuildRecord's config)
        raise InputError(f"{file}: {where}{e}") from e


def _typed(value, hint, file: Path, name: str):
    """`value` as the type `hint` names (str | None, dict[str, int], a record dataclass), else InputError."""
    kinds = [typing.get_origin(option) or option for option in _options(hint)]
    for kind in kinds:
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            return _from_json(kind, value, file, f"{name}.")
        if isinstance(value, kind):
            return value
    expected = " or ".join(kind.__name__ for kind in kinds)
    raise InputError(f"{file}: {name!r} is {json.dumps(value)[:60]}, not {expected}")


def _options(hint) -> tuple:
    """The types a field's annotation allows: those of a union, else itself."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _to_json(record) -> dict:
    """The record's JSON object: optional fields (default None) only when set, `extra` as its keys."""
    out = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if field.name == "extra":
            out.update(value)
        elif value is not None or field.default is not None:
            out[field.name] = _to_json(value) if dataclasses.is_dataclass(value) else value
    return out
