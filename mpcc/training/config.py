"""Recipe = one YAML file = one run, parsed with TRL's parser so every TRL/transformers option works.

The YAML is turned into command-line arguments before parsing, so argparse checks every key (unknown
keys and wrong types stop the run at start with the key's name) and command-line overrides win.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from trl import GRPOConfig, ModelConfig, SFTConfig, TrlParser

from mpcc.errors import ConfigError
from mpcc.recipes import read
from mpcc.rewards import resolve_rewards

TRAINERS = ("sft", "grpo", "grpo_prior")


@dataclass
class RunArguments:
    """What mpcc adds around TRL's configs: the trainer kind, data, rewards and vision settings."""

    trainer: str = field(default="grpo_prior", metadata={"help": f"one of {TRAINERS}"})
    dataset_path: str = field(
        default="synthetic:demo",
        metadata={
            "help": "an `mpcc prepare train` build, or `synthetic:<name>` to build (once, cached) a "
            "synthetic-scene train set with template reasoning traces"
        },
    )
    allow_eval_data: bool = field(
        default=False,
        metadata={
            "help": "train on an `mpcc prepare eval` build given as dataset_path (refused by default: "
            "training on a benchmark's items makes its scores meaningless)"
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N rows"})
    min_pixels: int | None = field(default=None, metadata={"help": "image processor lower bound on pixels"})
    max_pixels: int | None = field(default=None, metadata={"help": "image processor upper bound on pixels"})
    freeze_vision_tower: bool = field(
        default=True,
        metadata={"help": "keep the vision encoder frozen (full fine-tune of the language model)"},
    )
    eval_dataset_path: str | None = field(
        default=None, metadata={"help": "an `mpcc prepare eval` build to evaluate on during training"}
    )
    eval_every_steps: int = field(default=0, metadata={"help": "evaluate every N steps (0: never)"})
    eval_items: int = field(default=16, metadata={"help": "items of the eval build used (all their formats)"})
    eval_grounding: bool = field(
        default=False,
        metadata={
            "help": "also log grounding/* at each evaluation: attention mass on the context objects while "
            "reasoning, its collapse ratio and full-response entropy (mpcc.evaluation.grounding.evidence)"
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "replace the training run already in output_dir (its mpcc_run.json has other settings); "
            "without it such an output_dir is refused, and one with the same settings is resumed"
        },
    )
    accelerate_config: str | None = field(
        default=None,
        metadata={
            "help": "Accelerate config `mpcc train` launches with: a file, or a packaged config's name "
            "such as zero2_offload (none: one process)"
        },
    )

    def __post_init__(self):
        if self.trainer not in TRAINERS:
            raise ConfigError(f"trainer must be one of {TRAINERS}, got {self.trainer!r}")


@dataclass
class MpccGRPOConfig(GRPOConfig):
    """TRL's GRPOConfig plus the reward weights and the prior-sampling settings."""

    rewards: str = field(
        default="default",
        metadata={
            "help": "reward preset (`default`: format + exact match + Levenshtein; `paper`: the authors' "
            "0.6 x format + case-sensitive Levenshtein) or `name:weight,...` over mpcc.rewards.REWARDS"
        },
    )
    prior_mode: str = field(
        default="replace",
        metadata={
            "help": "`replace`: the trace takes one of the num_generations slots (the paper's text); "
            "`append`: groups hold num_generations generated samples + the trace slot (the authors' "
            "code). The trace slot is never generated."
        },
    )
    prior_prob: float = field(default=1.0, metadata={"help": "chance per group that its trace is injected"})
    prior_schedule: str = field(
        default="constant",
        metadata={"help": "`constant` or `linear` (prior_prob decays to 0 over max_steps)"},
    )
    prior_when: str = field(
        default="always",
        metadata={
            "help": "`always`, or `group_fails`: inject only when no generated sample of the group reaches "
            "prior_success_threshold on prior_success_reward (then the trace replaces a generated sample)"
        },
    )
    prior_success_reward: str = field(
        default="exact_match", metadata={"help": "reward judging group success"}
    )
    prior_success_threshold: float = field(default=1.0, metadata={"help": "success: reward >= this"})
    prior_in_group_stats: bool = field(
        default=True,
        metadata={"help": "count the trace in its group's reward mean/std (False: generated only)"},
    )
    compile_generation: bool = field(
        default=False,
        metadata={
            "help": "compile the decode step of HF generation (needs cache_implementation: static). TRL "
            "turns compilation off; with a static cache it removes most of the per-token Python and "
            "kernel-launch overhead that makes GPU decoding slow. Same completions."
        },
    )
    reuse_image_features: bool = field(
        default=True,
        metadata={
            "help": "encode each unique image once per step and reuse its features in generation, "
            "reference and old log-probs and (frozen tower) the policy forward; a group's G rows share one "
            "image (mpcc.generation.image_features; families whose API allows it, see mpcc.families). Same "
            "completions, losses and gradients."
        },
    )
    share_prompt_prefill: bool = field(
        default=True,
        metadata={
            "help": "HF generation: prefill each group's prompt once and share its KV cache with the group's "
            "rows (mpcc.generation.shared_prefill; dynamic cache, families whose API allows it). Same greedy "
            "completions."
        },
    )

    def __post_init__(self):
        choices = {
            "prior_mode": ("replace", "append"),
            "prior_schedule": ("constant", "linear"),
            "prior_when": ("always", "group_fails"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.compile_generation and self.cache_implementation != "static":
            raise ConfigError("compile_generation needs cache_implementation: static")
        if not 0 <= self.prior_prob <= 1:
            raise ConfigError(f"prior_prob must lie in [0, 1], got {self.prior_prob}")
        _, self.reward_weights = resolve_rewards(self.rewards)  # at parse time: the run record shows them
        self._as_given = {}
        if self.prior_mode == "append":
            # A group of G generated + the trace slot is a `replace` group of G + 1.
            self._as_given = {"prior_mode": "append", "num_generations": self.num_generations}
            self.num_generations += 1
            self.prior_mode = "replace"
        super().__post_init__()

    def to_dict(self) -> dict:
        """TRL's dump with `prior_mode` and `num_generations` as the recipe gave them (append: G generated
        + the trace), so run records, model cards and loggers show the user's settings, not the internal
        `replace` group of G + 1."""
        return super().to_dict() | self._as_given


def _as_cli(config: dict) -> list[str]:
    args = []
    for key, value in config.items():
        if value is None:
            continue
        args.append(f"--{key}")
        if isinstance(value, list):
            args += [str(v) for v in value]
        elif isinstance(value, dict):
            args.append(json.dumps(value))
        else:
            args.append(str(value))
    return args


class _ArgumentError(Exception):
    """What argparse would print, with the whole usage, before exiting: raised instead (one line)."""


class _RecipeParser(TrlParser):
    def error(self, message):
        raise _ArgumentError(message)


_ARGUMENT = re.compile(r"argument --([\w.-]+)(?:/--[\w.-]+)*: (.*)", re.DOTALL)


def _given(key: str, overrides: list[str]) -> bool:
    return any(a == f"--{key}" or a.startswith(f"--{key}=") for a in overrides)


def _argument_error(path: Path, message: str, overrides: list[str]) -> ConfigError:
    """argparse's `argument --learning_rate/--learning-rate: invalid float value: 'fast'` as
    `RECIPE: learning_rate: invalid float value: 'fast'`."""
    match = _ARGUMENT.fullmatch(message.strip())
    if match is None:
        return ConfigError(f"{path}: {message.strip()}")
    key, problem = match.groups()
    where = " (command-line override)" if _given(key, overrides) else ""
    return ConfigError(f"{path}: {key}{where}: {problem}")


def _check_single_values(parser, path: Path, config: dict, overrides: list[str]) -> None:
    """A list for a one-value key would reach argparse as `--key a b`, and only `b` would be reported."""

    def single(key: str) -> bool:
        action = parser._option_string_actions.get(f"--{key}")
        return action is not None and action.nargs in (None, "?")

    for key, value in config.items():
        if isinstance(value, list) and single(key):
            raise ConfigError(f"{path}: {key} takes one value, not a list: {value}")
    key, values = None, []
    for arg in [*overrides, "--"]:
        if not arg.startswith("--"):
            values.append(arg)
            continue
        if key is not None and len(values) > 1 and single(key):
            raise ConfigError(f"{path}: {key} (command-line override) takes one value, got {values}")
        key, _, value = arg[2:].partition("=")
        values = [value] if "=" in arg else []


def parse_recipe(path: Path, classes: tuple, config: dict, overrides: list[str]) -> tuple[list, list[str]]:
    """(the `classes` filled from a recipe's `config` and the command-line `overrides`, what no class took),
    with argparse's and the classes' own complaints as one-line ConfigErrors naming the file and the key.
    The one reading of recipe values: `mpcc.train` and the launcher (`mpcc.launch`) both go through it."""
    parser = _RecipeParser(classes, allow_abbrev=False)
    _check_single_values(parser, path, config, overrides)
    try:
        *parsed, remaining = parser.parse_args_and_config(
            args=[*_as_cli(config), *overrides], return_remaining_strings=True
        )
    except _ArgumentError as e:  # a wrong type or choice: argparse names the key and the value
        raise _argument_error(path, str(e), overrides) from None
    except ValueError as e:  # a config's own check
        raise ConfigError(f"{path}: {e}") from e
    return parsed, remaining


def load_recipe(
    recipe: str | Path, overrides: list[str] = ()
) -> tuple[RunArguments, GRPOConfig | SFTConfig, ModelConfig]:
    """Parse a recipe (a YAML file or a packaged recipe's name) and command-line overrides into (run,
    trainer config, model config). Every problem is a one-line ConfigError naming the file and the key."""
    path, config = read(recipe)
    overrides = list(overrides)
    kind = config.get("trainer", RunArguments.trainer)
    overridden = [a for a in overrides if a.startswith("--trainer")]
    if overridden:
        raise ConfigError(
            "the trainer kind is part of the recipe; it cannot be overridden on the command line"
        )
    train_config = SFTConfig if kind == "sft" else MpccGRPOConfig
    parsed, remaining = parse_recipe(path, (RunArguments, train_config, ModelConfig), config, overrides)
    unknown = [a.partition("=")[0][2:] for a in remaining if a.startswith("--")]
    if unknown:
        raise ConfigError(f"{path}: unknown recipe key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    if remaining:
        raise ConfigError(f"{path}: values without a key: {remaining}")
    for key in (k for k, v in config.items() if v is None):  # YAML null: set after parsing (argparse cannot)
        owner = next((p for p in parsed if key in {f.name for f in fields(p)}), None)
        if owner is None:
            raise ConfigError(f"{path}: unknown recipe key {key!r}")
        setattr(owner, key, None)
    _check_lora_targets(path, parsed[2])
    return tuple(parsed)


def _check_lora_targets(path: Path, model_args: ModelConfig) -> None:
    """PEFT picks LoRA's target modules by model type, and knows none for Qwen VL models: without
    lora_target_modules their run would stop only after the model is loaded."""
    if not model_args.use_peft or model_args.lora_target_modules or not model_args.model_name_or_path:
        return
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    from mpcc.models import model_type

    kind = model_type(model_args.model_name_or_path)
    if kind not in defaults:
        raise ConfigError(
            f"{path}: use_peft needs lora_target_modules: PEFT has no default for {kind} models "
            "(e.g. lora_target_modules: all-linear)"
        )
