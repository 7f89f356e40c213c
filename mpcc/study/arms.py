"""What each run of the study trains: its recipe, start, data, steps and the settings it changes.

Everything not named here is the recipe's (`--recipes`), so the study compares the methods as the demo
trains them. The settings changed, and why:
- prior sampling, append vs replace, at the recipe's `num_generations` G: append = G generated samples +
  the trace (the authors' code), replace = G - 1 generated + the trace (the paper's text); both see as
  many groups per step as the recipe (the batch is groups x rows per group);
- reward ablations: the prior-sampling (append) run with one component of the recipe's `rewards`
  removed, the others at their weights;
- the weak start: from the untrained start model, the settings `benchmarks/learning_curve.py` measured
  the mechanism with (4 groups a step, learning rate 1e-2 constant), and the demo's completion length
  as every GRPO run here (the scene traces run about 50 tokens: the recipe's 48 clipped every generated
  imitation of them, so none could ever be well formed and rewarded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mpcc.demo import NEW_TOKENS
from mpcc.study.config import StudyConfig

WEAK_GROUPS = 4  # groups a step, learning rate: benchmarks/learning_curve.py's mechanism run
WEAK_LEARNING_RATE = "1e-2"
MAIN = ("zero_shot", "sft", "grpo", "prior_append", "prior_replace")
MASKING = {"sft": "patch_sft", "prior_append": "patch_prior"}  # semantic run -> its random-patch twin
WEAK = ("weak_grpo", "weak_prior")


@dataclass(frozen=True)
class Arm:
    """One run of the study, trained once per seed (or, `seeded` False, once for all)."""

    name: str
    label: str
    recipe: str | None  # sft / grpo / grpo_prior; None: not trained (the start model)
    start: str | None = None  # the arm (same seed) it continues; None: the untrained start model
    data: str = "train"  # "train" (semantic masks) or "train_patch" (random patches)
    steps: int = 0
    overrides: tuple[str, ...] = ()
    evaluated: bool = True
    seeded: bool = True


@dataclass(frozen=True)
class RecipeFacts:
    """What the study reads from the recipes to set its arms."""

    plain_generations: int  # grpo.yaml's num_generations
    prior_generations: int  # grpo_prior.yaml's num_generations as given (its prior_mode's meaning)
    prior_groups: int  # groups a step in grpo_prior.yaml
    rewards: dict[str, float]  # grpo_prior.yaml's reward components and weights


def recipe_path(recipes: str, name: str) -> str:
    """The recipe file `name` of `recipes`: a file there, else a packaged recipe's name."""
    return str(Path(recipes) / f"{name}.yaml")


def read_facts(recipes: str) -> RecipeFacts:
    from mpcc.rewards import REWARDS, resolve_rewards
    from mpcc.training.config import load_recipe

    _, plain, _ = load_recipe(recipe_path(recipes, "grpo"))
    _, prior, _ = load_recipe(recipe_path(recipes, "grpo_prior"))
    given = prior.to_dict()  # prior_mode and num_generations as the recipe gives them
    rows = prior.num_generations  # the group as trained: append's G + 1, replace's G
    funcs, weights = resolve_rewards(prior.rewards)
    names = {func: name for name, func in REWARDS.items()}
    return RecipeFacts(
        plain_generations=plain.num_generations,
        prior_generations=given["num_generations"],
        prior_groups=max(1, prior.per_device_train_batch_size // rows),
        rewards={names[f]: w for f, w in zip(funcs, weights)},
    )


def _prior(mode: str, facts: RecipeFacts, groups: int) -> tuple[str, ...]:
    g = facts.prior_generations
    rows = g + 1 if mode == "append" else g
    return (
        "--prior_mode",
        mode,
        "--num_generations",
        str(g),
        "--per_device_train_batch_size",
        str(groups * rows),
    )


def _without(rewards: dict[str, float], left_out: str) -> str:
    return ",".join(f"{name}:{weight:g}" for name, weight in rewards.items() if name != left_out)


def arms(config: StudyConfig, facts: RecipeFacts) -> dict[str, Arm]:
    """Every run of the study by name, in the order they run (each after the one it starts from)."""
    tokens = ("--max_completion_length", str(NEW_TOKENS))
    append = _prior("append", facts, facts.prior_groups) + tokens
    grpo = config.grpo_steps
    out = {
        "zero_shot": Arm("zero_shot", "zero-shot = prompt-only", None, seeded=False),
        "sft": Arm("sft", "SFT", "sft", steps=config.sft_steps),
        "grpo": Arm("grpo", "GRPO", "grpo", "sft", steps=grpo, overrides=tokens),
        "prior_append": Arm(
            "prior_append", "GRPO + prior (append)", "grpo_prior", "sft", steps=grpo, overrides=append
        ),
        "prior_replace": Arm(
            "prior_replace",
            "GRPO + prior (replace)",
            "grpo_prior",
            "sft",
            steps=grpo,
            overrides=_prior("replace", facts, facts.prior_groups) + tokens,
        ),
    }
    if "masking" in config.ablations:
        out["patch_sft"] = Arm(
            "patch_sft", "SFT, random patches", "sft", data="train_patch", steps=config.sft_steps
        )
        out["patch_prior"] = Arm(
            "patch_prior",
            "GRPO + prior (append), random patches",
            "grpo_prior",
            "patch_sft",
            "train_patch",
            grpo,
            append,
        )
    if "rewards" in config.ablations and len(facts.rewards) > 1:
        for name in facts.rewards:
            spec = ("--rewards", _without(facts.rewards, name))
            out[f"no_{name}"] = Arm(
                f"no_{name}",
                f"GRPO + prior (append), no {name}",
                "grpo_prior",
                "sft",
                steps=grpo,
                overrides=append + spec,
            )
    if "weak_start" in config.ablations and config.weak_steps:
        weak = ("--learning_rate", WEAK_LEARNING_RATE, "--lr_scheduler_type", "constant", *tokens)
        plain_batch = str(WEAK_GROUPS * facts.plain_generations)
        out["weak_grpo"] = Arm(
            "weak_grpo",
            "plain GRPO from the untrained model",
            "grpo",
            steps=config.weak_steps,
            overrides=weak + ("--per_device_train_batch_size", plain_batch),
            evaluated=False,
        )
        out["weak_prior"] = Arm(
            "weak_prior",
            "GRPO + prior (append) from the untrained model",
            "grpo_prior",
            steps=config.weak_steps,
            overrides=weak + _prior("append", facts, WEAK_GROUPS),
            evaluated=False,
        )
    return out
