"""Recipe = one YAML file = one run, parsed with TRL's parser so every TRL/transformers option works.

The YAML is turned into command-line arguments before parsing, so argparse checks every key (unknown
keys and wrong types stop the run at start with the key's name) and command-line overrides win.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from trl import GRPOConfig, ModelConfig, SFTConfig, TrlParser

from mpcc.errors import ConfigError
from mpcc.recipes import read

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
            "reasoning, its collapse ratio and full-response entropy (mpcc.evaluation.grounding)"
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


def load_recipe(
    recipe: str | Path, overrides: list[str] = ()
) -> tuple[RunArguments, GRPOConfig | SFTConfig, ModelConfig]:
    """Parse a recipe (a YAML file or a packaged recipe's name) and command-line overrides into (run,
    trainer config, model config)."""
    path, config = read(recipe)
    kind = config.get("trainer", RunArguments.trainer)
    overridden = [a for a in overrides if a.startswith("--trainer")]
    if overridden:
        raise ConfigError(
            "the trainer kind is part of the recipe; it cannot be overridden on the command line"
        )
    train_config = SFTConfig if kind == "sft" else MpccGRPOConfig
    parser = TrlParser((RunArguments, train_config, ModelConfig), allow_abbrev=False)
    try:
        parsed = parser.parse_args_and_config(args=[*_as_cli(config), *overrides])
    except SystemExit as e:  # argparse already printed which key is wrong
        raise ConfigError(f"{path}: invalid recipe (see the message above)") from e
    except ValueError as e:  # a config's own check
        raise ConfigError(f"{path}: {e}") from e
    for key in (k for k, v in config.items() if v is None):  # YAML null: set after parsing (argparse cannot)
        owner = next((p for p in parsed if key in {f.name for f in fields(p)}), None)
        if owner is None:
            raise ConfigError(f"{path}: unknown recipe key {key!r}")
        setattr(owner, key, None)
    return parsed
