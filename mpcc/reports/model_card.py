"""The text of an exported model's card (README.md): what the weights are, how to load them, how they were
trained and on what (from the run record, mpcc_run.json) and their eval results (from metrics.json).
`mpcc.export` adds the Hub metadata."""

from __future__ import annotations

from pathlib import Path

from mpcc.data.difficulty import WEIGHTS
from mpcc.records import BUILD_FILE, TRAINING_RUN_FILE, TrainingRun
from mpcc.reports.eval_report import metrics_sections
from mpcc.reports.tables import markdown_table
from mpcc.rewards import REWARDS, resolve_rewards

CITATION = """\
@inproceedings{yu2026mpcc,
  title     = {Activating Visual Context and Commonsense Reasoning through Masked Prediction in {VLMs}},
  author    = {Yu, Jiaao and Li, Shenwei and Han, Mingjie and Yin, Yifei and Song, Wenzheng and
               Jia, Chenghao and Lan, Man},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  volume    = {40},
  number    = {33},
  pages     = {27952--27960},
  year      = {2026},
  doi       = {10.1609/aaai.v40i33.40019},
  eprint    = {2510.21807},
  archivePrefix = {arXiv}
}"""
TRAINING_KEYS = (
    "learning_rate", "lr_scheduler_type", "warmup_steps", "num_train_epochs", "max_steps",
    "per_device_train_batch_size", "gradient_accumulation_steps", "num_generations", "max_completion_length",
    "temperature", "beta", "loss_type", "scale_rewards", "max_grad_norm", "weight_decay", "bf16", "seed",
)  # fmt: skip
PRIOR_KEYS = (
    "prior_mode", "prior_prob", "prior_schedule", "prior_when", "prior_success_reward",
    "prior_success_threshold", "prior_in_group_stats",
)  # fmt: skip


def _settings(rows: list[tuple[str, object]]) -> list[str]:
    """Settings as the recipe spells them: each value in code font."""
    return markdown_table(("setting", "value"), [(k, f"`{v}`") for k, v in rows])


def _reward(trainer: dict) -> str:
    """The weighted sum the run rewarded, by reward name."""
    names = {f: n for n, f in REWARDS.items()}
    funcs, _ = resolve_rewards(trainer["rewards"])
    weighted = " + ".join(f"{w:g} x {names[f]}" for f, w in zip(funcs, trainer["reward_weights"]))
    return f"Reward (`rewards: {trainer['rewards']}`): {weighted}."


def _prior(trainer: dict) -> list[str]:
    """How prior sampling fills a group, as the recipe says it (not the trainer's internal group)."""
    g = trainer["num_generations"]
    group = (
        f"{g} generated samples + the trace, groups of {g + 1}"
        if trainer["prior_mode"] == "append"
        else f"the trace takes one of the {g} slots: {g - 1} generated samples + the trace"
    )
    return [
        f"Prior sampling (`prior_mode: {trainer['prior_mode']}`, {group}): the annotated trace "
        "`<think> trace</think><answer>name</answer>` is rewarded and trained on like a generated sample.",
        "",
        *_settings([(k, trainer[k]) for k in PRIOR_KEYS]),
    ]


def _training_section(record: TrainingRun | None, step: int | None) -> str:
    if record is None:
        return f"## Training\n\nNot recorded (the checkpoint's run wrote no `{TRAINING_RUN_FILE}`).\n"
    trainer, model, kind = record.trainer, record.model, record.run["trainer"]
    rows = [("trainer", kind), ("model_name_or_path", model["model_name_or_path"])]
    rows += [(k, trainer[k]) for k in TRAINING_KEYS if trainer.get(k) not in (None, -1)]
    rows += [("freeze_vision_tower", record.run["freeze_vision_tower"])]
    if model.get("use_peft"):
        rows += [(f"LoRA {k[5:]}", model[k]) for k in ("lora_r", "lora_alpha", "lora_dropout")]
        rows += [("LoRA target_modules", model.get("lora_target_modules"))]
    exported = f"; exported at step {step}." if step is not None else "."
    lines = ["## Training", "", f"mpcc {record.mpcc_version}, `{kind}` trainer (TRL){exported}", ""]
    lines += _settings(rows)
    if kind != "sft":
        lines += [_reward(trainer), ""]
    if kind == "grpo_prior":
        lines += _prior(trainer)
    return "\n".join(lines)


def _data_section(record: TrainingRun | None) -> str:
    build = record.dataset.build if record else None
    if build is None:
        where = f" `{record.dataset.path}`" if record else ""
        return f"## Data\n\nTraining data{where}: no mpcc build record (`{BUILD_FILE}`) was found.\n"
    config, mask = build.config, build.mask
    low, high = build.thresholds
    ood = ", ".join(config["ood_categories"]) or "none"
    ease = " + ".join(f"{w:g} x {k}" for k, w in WEIGHTS.items())
    rows = [
        ("source annotations", Path(build.annotations).name),
        ("rows", build.num_rows),
        ("rows per level", ", ".join(f"{k} {v}" for k, v in build.rows_per_level.items())),
        ("masking", f"{mask['mode']}, fill {mask['fill']}, dilate {mask['dilate_px']} px / "
         f"{mask['dilate_frac']:g}, feather {mask['feather']:g}"),
        ("reasoning traces", "template traces" if config["template_traces"] else "as annotated"),
        ("prompt version", build.prompt_version),
        ("seed", build.seed),
    ]  # fmt: skip
    lines = ["## Data", "", "An `mpcc prepare train` build (COCO format -> one hidden object per row).", ""]
    lines += _settings(rows)
    lines += [
        f"Difficulty (model-free, `mpcc.data.difficulty`): difficulty_score = 1 - ({ease}), where "
        "predictability ranks the hidden category by the visible context's co-occurrence statistics, "
        f"context counts other instances (saturating) and visibility is 1 - area fraction; levels cut "
        f"the score at the training build's 1/3 and 2/3 quantiles ({low:.4f} / {high:.4f}).",
        "",
        f"Held-out (out-of-distribution) categories, never training targets: {ood}.",
        "",
    ]
    return "\n".join(lines)


def _eval_section(evaluation: dict | None) -> str:
    """The eval run's tables one heading level down, saying whose weights were evaluated."""
    if evaluation is None:
        return ""
    model = evaluation["model"]
    what = (
        f"Of the **base model** `{model}`, not of these fine-tuned weights: a baseline to compare with."
        if evaluation["base"]
        else f"Of these weights (`mpcc eval` of `{model}`)."
    )
    lines = ["## Evaluation (`mpcc eval`)", "", what, "", *metrics_sections(evaluation["metrics"], depth=3)]
    return "\n".join(lines) + "\n"


def _usage(adapter_only: bool, name: str, base: str) -> str:
    """Stock transformers only: the folder names stock classes, so no mpcc import is needed."""
    load = (
        f'base = AutoModelForImageTextToText.from_pretrained("{base}")\n'
        f'model = PeftModel.from_pretrained(base, "{name}")  # or model.merge_and_unload()\n'
        if adapter_only
        else f'model = AutoModelForImageTextToText.from_pretrained("{name}")\n'
    )
    imports = "from peft import PeftModel\n" if adapter_only else ""
    return (
        "## Usage\n\n```python\n"
        f"{imports}from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
        f'{load}processor = AutoProcessor.from_pretrained("{name}")\n```\n\n'
        "vLLM serves the folder as it is (`vllm serve PATH`). Prompts follow `mpcc.data.prompts`: the "
        "image, then the question; the model answers `<think>...</think><answer>...</answer>`.\n"
    )


def card_text(
    record: TrainingRun | None,
    base: str,
    adapter_only: bool,
    merged: bool,
    evaluation: dict | None,
    name: str,
    license: str,
    step: int | None = None,
) -> str:
    """The card's markdown below its metadata: `record` is the run record (None: not recorded),
    `evaluation` {"metrics", "model" evaluated, "base": whether that was the base model} or None."""
    weights = (
        "a LoRA adapter only (not merged): load the base model and apply it with peft"
        if adapter_only
        else "the full model" + (" (LoRA adapter merged into the base)" if merged else "")
    )
    return (
        f"# {name}\n\nA vision-language model fine-tuned with mpcc on **Masked Prediction via Context and "
        "Commonsense** (MPCC, [arXiv 2510.21807](https://arxiv.org/abs/2510.21807)): one object in the image "
        "is hidden and the model names it from the visible context and commonsense.\n\n"
        f"- Base model: `{base}`\n- Weights: {weights}\n\n"
        f"{_usage(adapter_only, name, base)}\n{_training_section(record, step)}\n{_data_section(record)}\n"
        f"{_eval_section(evaluation)}"
        f"## Licence\n\n`{license}`. The weights derive from `{base}`, whose licence terms apply.\n\n"
        f"## Citation\n\n```bibtex\n{CITATION}\n```\n"
    )
