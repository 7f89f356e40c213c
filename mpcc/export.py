"""`mpcc export`: a training checkpoint -> a validated, documented model folder -> the Hugging Face Hub.

Reads what mpcc training writes: a final output_dir or a `checkpoint-N` holding full weights, a LoRA
adapter, or only DeepSpeed ZeRO shards (`global_stepN/` + `latest`), which DeepSpeed's own zero_to_fp32
consolidates. The folder is assembled in a temporary directory, reloaded and checked to give the
checkpoint's logits on a fixed image + prompt, and only then renamed into place: nothing reaches the
Hub unless that check passed. mpcc never reads the Hub token; huggingface_hub finds it (HF_TOKEN or a
cached login), so it cannot end up in logs, output or the card.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData, try_to_load_from_cache
from PIL import Image

from mpcc.data import prompts
from mpcc.errors import ConfigError, InputError, MissingInputError, MpccError, ValidationError
from mpcc.evaluation.harness import read_metrics
from mpcc.evaluation.run_identity import evaluated, weights_fingerprint
from mpcc.generation.generators import conversation
from mpcc.inputs import read_json
from mpcc.models import TINY_PREFIX, best_device, load_model, load_processor
from mpcc.options import option
from mpcc.outputs.checks import check_output
from mpcc.outputs.overlap import check_inputs
from mpcc.outputs.staging import staged_output
from mpcc.records import TRAINING_RUN_FILE, TrainingRun, read_eval_run
from mpcc.reports.model_card import card_text
from mpcc.training.record import checkpoint_run

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
ADAPTER_FILE = "adapter_config.json"
ZERO_TAG_FILE = "latest"  # DeepSpeed: names the global_stepN folder holding the shards
CARD_FILE = "README.md"
KIND = "export"  # what the output's marker records (--overwrite replaces only a previous export)
# Accepted max |exported - checkpoint| logit, relative to max |checkpoint logit|. Saving and reloading
# is exact; merging LoRA rounds the merged weights once in the model's dtype.
RTOL = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class ExportValidationError(ValidationError):
    """The exported folder does not reproduce the checkpoint; nothing was written."""


@dataclass(frozen=True)
class ExportJob:
    """`mpcc export`: consolidate a training output_dir or checkpoint-N (full weights, a LoRA adapter, or
    DeepSpeed ZeRO shards) into a folder with weights, processor, chat template, generation config and
    README.md; reload it and check it gives the checkpoint's logits before anything is uploaded."""

    checkpoint: Path = option(
        help="a training output_dir or one of its checkpoint-N folders", positional=True
    )
    out: Path = option(help="folder to write (absent or empty; written atomically)")
    overwrite: bool = option(False, "replace a previous mpcc output at --out (never other files)")
    merge_lora: bool = option(
        False, "merge a LoRA adapter into its base and export the full model (default: the adapter alone)"
    )
    base_model: str | None = option(None, "LoRA: the base model to load instead of the one the adapter names")
    eval_run: Path | None = option(None, "an `mpcc eval` output folder: its metrics go into the card")
    license: str | None = option(
        None, "licence id for the card (default: the base model's if known, else other)"
    )
    push_to_hub: str | None = option(
        None,
        "upload the validated folder to this Hub model repo (token: HF_TOKEN or `hf auth login`)",
        metavar="REPO",
    )
    private: bool = option(False, "create the Hub repo as private")
    dry_run: bool = option(False, "with --push-to-hub: list what would be uploaded, upload nothing")

    def __post_init__(self):
        if (self.private or self.dry_run) and not self.push_to_hub:
            raise ConfigError("--private and --dry-run need --push-to-hub REPO")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    source: str  # checkpoint kind: model | adapter | zero
    adapter_only: bool  # the folder holds a LoRA adapter, not a full model
    max_diff: float  # max |exported - checkpoint| logit on the probe input
    tolerance: float


# ------------------------------------------------------------------------------------------ reading


def checkpoint_kind(path: Path) -> str:
    """`model` (transformers weights), `adapter` (a peft LoRA adapter) or `zero` (DeepSpeed shards only)."""
    if not path.is_dir():
        raise MissingInputError(f"{path}: no such checkpoint directory")
    if any((path / name).is_file() for name in WEIGHT_FILES):
        return "model"
    if (path / ADAPTER_FILE).is_file():
        return "adapter"
    if (path / ZERO_TAG_FILE).is_file():
        if not (path / "config.json").is_file():
            raise InputError(f"{path}: DeepSpeed shards without config.json: the model cannot be rebuilt")
        return "zero"
    raise InputError(
        f"{path}: not a training checkpoint (no {WEIGHT_FILES[0]}, {ADAPTER_FILE} or DeepSpeed "
        f"`{ZERO_TAG_FILE}` file); pass a training output_dir or one of its checkpoint-N folders"
    )


def adapter_base(path: Path, base_model: str | None = None) -> str:
    """The base model an adapter applies to: `base_model`, else the one its adapter_config.json names."""
    if base_model:
        return base_model
    from peft import PeftConfig

    return PeftConfig.from_pretrained(str(path)).base_model_name_or_path


def _zero_model(path: Path):
    """Weights gathered from the ZeRO shards by DeepSpeed's zero_to_fp32, in the checkpoint's dtype."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING, AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(path)
    if type(config) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        raise InputError(f"{path}: a {config.model_type!r} model, not an image-text-to-text model")
    state_dict = get_fp32_state_dict_from_zero_checkpoint(str(path))
    model, info = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(config)].from_pretrained(
        None, config=config, state_dict=state_dict, dtype="auto", output_loading_info=True
    )
    bad = {k: sorted(map(str, v))[:5] for k, v in info.items() if v}
    if bad:
        raise InputError(f"{path}: the ZeRO shards do not match the model in config.json: {bad}")
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


def _same_model(a: str, b: str) -> bool:
    """One model: the same name, or local folders with the same weights (a copy, a moved folder)."""
    return a == b or (
        Path(a).is_dir() and Path(b).is_dir() and weights_fingerprint(a) == weights_fingerprint(b)
    )


def check_base(path: Path, base_model: str, record: TrainingRun | None) -> None:
    """Refuse a --base-model that is not the base the adapter was trained on (adapter_config.json, and
    mpcc_run.json when there) nor a copy of it; a recorded base that is a path no longer there (it has
    moved) cannot be compared, and is not."""
    recorded = {ADAPTER_FILE: adapter_base(path)}
    if record:
        recorded[TRAINING_RUN_FILE] = record.model["model_name_or_path"]
    if any(_same_model(base_model, name) for name in recorded.values()):
        return
    if all(
        not Path(n).exists() and not HUB_ID.match(n) and not n.startswith(TINY_PREFIX)
        for n in recorded.values()
    ):
        return
    named = "; ".join(f"{file} names {name}" for file, name in recorded.items())
    raise ConfigError(
        f"{path}: --base-model {base_model} is not the base the adapter was trained on ({named}): pass "
        "that base or a copy of it, or leave --base-model out"
    )


def _adapter_model(path: Path, base: str):
    from peft import PeftModel

    try:
        base_model = load_model(base)
    except (OSError, ValueError) as e:
        raise InputError(
            f"{path}: cannot load the adapter's base model {base!r} ({e}); pass --base-model PATH"
        ) from e
    return PeftModel.from_pretrained(base_model, str(path))


def load_checkpoint(path: Path, kind: str, base: str | None = None):
    """The checkpoint as an eval-mode model (a PeftModel for an adapter)."""
    if kind == "zero":
        model = _zero_model(path)
    elif kind == "adapter":
        model = _adapter_model(path, base)
    else:
        model = load_model(path)
    return model.eval()


def checkpoint_processor(path: Path, base: str | None = None):
    """The processor trainers save beside the weights, else the adapter's base model's."""
    for source in (path, base):
        if source is None:
            continue
        try:
            return load_processor(source)
        except OSError as e:
            logger.info("no processor in %s (%s)", source, e)
    raise InputError(f"{path}: no processor saved in the checkpoint (nor in its base model)")


# --------------------------------------------------------------------------------------- validation


def probe_inputs(processor):
    """A fixed image (a gradient with a black box, as MPCC hides objects) + the open MPCC question."""
    y, x = np.mgrid[0:112, 0:112]
    pixels = np.stack([2 * x, 2 * y, x + y], axis=-1).astype(np.uint8)
    pixels[40:72, 48:80] = 0
    row = {"prompt": prompts.conversation(prompts.open_question("black")), "image": Image.fromarray(pixels)}
    return processor.apply_chat_template(
        conversation(row), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )


@torch.inference_mode()
def probe_logits(model, inputs) -> torch.Tensor:
    return model(**inputs.to(model.device)).logits.float().cpu()


def validate(
    folder: Path, reference: torch.Tensor, dtype: torch.dtype, base: str | None
) -> tuple[float, float]:
    """Reload `folder` as a user would (processor included) and compare logits; raise on a mismatch."""
    model = _adapter_model(folder, base) if (folder / ADAPTER_FILE).is_file() else load_model(folder)
    inputs = probe_inputs(load_processor(folder))
    logits = probe_logits(model.eval().to(best_device()), inputs)
    tolerance = RTOL.get(dtype, RTOL[torch.bfloat16]) * reference.abs().max().item()
    if logits.shape != reference.shape:
        raise ExportValidationError(
            f"the exported model's logits have shape {tuple(logits.shape)}, the checkpoint's "
            f"{tuple(reference.shape)}: the exported processor or model differs"
        )
    diff = (logits - reference).abs().max().item()
    if not diff <= tolerance:  # also catches NaN
        raise ExportValidationError(
            f"the exported model does not reproduce the checkpoint: max |logit difference| {diff:.3g} "
            f"> tolerance {tolerance:.3g} ({dtype})"
        )
    return diff, tolerance


# ------------------------------------------------------------------------------------------- card


def evaluation(run: Path, checkpoint: Path, bases: list[str]) -> dict:
    """The metrics of the eval `run` and the model it evaluated: the checkpoint, else one of its `bases`;
    an eval of another model is refused (its metrics would describe another model)."""
    metrics, identity = read_metrics(run), read_eval_run(run)
    if evaluated(identity, checkpoint):
        return {"metrics": metrics, "model": identity.model, "base": False}
    for base in bases:
        if evaluated(identity, base):
            return {"metrics": metrics, "model": base, "base": True}
    raise InputError(
        f"--eval-run {run} evaluated {identity.model}, not {checkpoint} (nor its base "
        f"{' / '.join(bases) or 'unknown'}): pass an `mpcc eval` of this checkpoint or of its base"
    )


def base_license(base: str) -> str | None:
    """The base model's licence from its model card, when that card is on this machine."""
    if Path(base).is_dir():
        readme = Path(base) / CARD_FILE
    elif HUB_ID.match(base):
        readme = try_to_load_from_cache(base, CARD_FILE)
    else:
        return None
    if not isinstance(readme, (str, Path)) or not Path(readme).is_file():
        return None
    return ModelCard.load(readme).data.license


def model_card(
    record: TrainingRun | None,
    base: str,
    adapter_only: bool,
    merged: bool,
    evaluation: dict | None,
    name: str,
    license: str | None = None,
    step: int | None = None,
) -> ModelCard:
    """README.md with Hub metadata: what the weights are, how they were trained, on what, and results
    (`evaluation`: from `evaluation`, naming the model evaluated)."""
    kind = record.run["trainer"] if record else None
    license = license or base_license(base) or "other"
    data = ModelCardData(
        license=license,
        base_model=base if HUB_ID.match(base) and not Path(base).exists() else None,
        library_name="peft" if adapter_only else "transformers",
        pipeline_tag="image-text-to-text",
        tags=["mpcc", "vision-language", "masked-prediction", "trl", *([kind] if kind else []),
              *(["lora"] if adapter_only or merged else [])],
    )  # fmt: skip
    body = card_text(record, base, adapter_only, merged, evaluation, name, license, step)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


# ------------------------------------------------------------------------------------------- export


def _step(path: Path) -> int | None:
    state = path / "trainer_state.json"
    return read_json(state).get("global_step") if state.is_file() else None


def save_folder(model, processor, folder: Path, merge: bool):
    """Weights (or the adapter), config, generation config, processor and chat template into `folder`."""
    if merge:
        model = model.merge_and_unload()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if hasattr(model, "get_base_model"):  # adapter only: the base's generation settings ride along
        model.get_base_model().generation_config.save_pretrained(folder)


def export(
    checkpoint: str | Path,
    out: str | Path,
    merge_lora: bool = False,
    base_model: str | None = None,
    eval_run: str | Path | None = None,
    license: str | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export `checkpoint` to `out` (created atomically; absent, empty, or replaced with `overwrite`),
    validated by logits.

    `name` (e.g. the Hub repo id) titles the card and its usage snippet; default: the folder name.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    check_output(out, overwrite, inputs=(checkpoint, base_model, eval_run), kind=KIND)
    kind = checkpoint_kind(checkpoint)
    if kind != "adapter" and (merge_lora or base_model):
        raise ConfigError(
            f"{checkpoint}: --merge-lora / --base-model apply to LoRA adapters, not to a {kind} checkpoint"
        )
    record = checkpoint_run(checkpoint)
    if base_model:
        check_base(checkpoint, base_model, record)
    base = adapter_base(checkpoint, base_model) if kind == "adapter" else None
    check_inputs(out, (base,))  # the base an adapter names, when it is a local folder
    card_base = (record.model.get("model_name_or_path") if record else None) or base or "unknown"
    bases = list(dict.fromkeys(b for b in (card_base, base) if b and b != "unknown"))
    evaluated_by = evaluation(Path(eval_run), checkpoint, bases) if eval_run else None
    processor = checkpoint_processor(checkpoint, base)
    model = load_checkpoint(checkpoint, kind, base).to(best_device())
    reference, dtype = probe_logits(model, probe_inputs(processor)), model.dtype
    with staged_output(out, overwrite, kind=KIND) as staging:
        save_folder(model, processor, staging, merge_lora)
        del model
        diff, tolerance = validate(staging, reference, dtype, base)
        adapter_only = kind == "adapter" and not merge_lora
        card = model_card(
            record,
            card_base,
            adapter_only,
            merge_lora,
            evaluated_by,
            name or out.name,
            license,
            _step(checkpoint),
        )
        card.save(staging / CARD_FILE)
    logger.info("exported %s (%s) to %s; max logit difference %.3g", checkpoint, kind, out, diff)
    return ExportResult(out, kind, adapter_only, diff, tolerance)


# --------------------------------------------------------------------------------------------- hub


def upload_plan(folder: str | Path) -> list[tuple[str, int]]:
    """(path in the repo, size in bytes) of every file `push` would upload."""
    folder = Path(folder)
    return [
        (p.relative_to(folder).as_posix(), p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file()
    ]


def push(folder: str | Path, repo_id: str, private: bool = False):
    """create_repo + upload_folder; the token comes from huggingface_hub's own sources. Returns CommitInfo."""
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message="Upload with mpcc export",
        )
    except HfHubHTTPError as e:
        raise MpccError(f"push to {repo_id} failed ({e}); the export in {folder} is complete") from e
