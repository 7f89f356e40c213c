"""The options of `mpcc study`, declared once (mpcc.options): its parser, `--help` and `--config` come
from here. Step counts, scene and item numbers default to the demo's, so the study trains each model as
`mpcc demo` does and a change of the demo's budget carries over."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mpcc.demo_config import DemoConfig
from mpcc.errors import ConfigError
from mpcc.options import option

ABLATIONS = ("masking", "rewards", "weak_start")


@dataclass(frozen=True)
class StudyConfig:
    """`mpcc study`: the paper's table in miniature (zero-shot, SFT, GRPO, GRPO + prior sampling appended
    and replacing a sample; by level, OOD and format) over several training seeds with 95% intervals, and
    its ablations: semantic vs random-patch masking, each reward component removed, prior sampling from a
    weak start. Resumable: a finished run is skipped."""

    out: Path = option(Path("runs/study"), "work directory")
    seeds: int = option(3, "training seeds (seed, seed + 1, ...); the scenes are drawn once", minimum=1)
    seed: int = option(0, "first training seed, and the scenes' seed", minimum=0)
    num_images: int = option(DemoConfig.num_images, "synthetic training scenes (held-out: half)", minimum=2)
    sft_steps: int = option(DemoConfig.sft_steps, "SFT steps on the traces", minimum=1)
    grpo_steps: int = option(DemoConfig.grpo_steps, "steps of each GRPO run from the SFT model", minimum=1)
    weak_steps: int = option(
        100, "steps of each weak-start run (plain GRPO, GRPO + prior from the untrained model)", minimum=0
    )
    eval_items: int = option(
        DemoConfig.eval_items, "eval items (hidden objects), each asked in every format", minimum=1
    )
    ablations: tuple[str, ...] = option(
        ("masking", "rewards", "weak_start"),
        "ablations to run, comma-separated of masking, rewards, weak_start; `none` for the main table only",
        parse=lambda text: (
            () if text.strip().lower() == "none" else tuple(p.strip() for p in text.split(","))
        ),
    )
    recipes: str = option(
        DemoConfig.recipes,
        "where sft.yaml, grpo.yaml and grpo_prior.yaml are: a directory, or a packaged recipe folder",
    )

    def __post_init__(self):
        unknown = set(self.ablations) - set(ABLATIONS)
        if unknown:
            raise ConfigError(f"--ablations: unknown {sorted(unknown)}; choose from {', '.join(ABLATIONS)}")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seed, self.seed + self.seeds))
