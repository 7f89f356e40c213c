"""`mpcc demo`'s options, apart from the demo's stages: `mpcc demo --help` and `mpcc study --help` read them
without importing torch, transformers and TRL (seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mpcc.options import option


@dataclass(frozen=True)
class DemoConfig:
    """`mpcc demo`: synthetic scenes with reasoning traces -> MPCC train set in every format (traces
    imported and verified) + eval set -> preview -> SFT of a tiny offline model (CPU), then from it GRPO
    with prior sampling and plain GRPO -> eval of all four on the same items, and their step-level
    grounding on fewer -> comparison -> export."""

    out: Path = option(Path("runs/demo"), "work directory")
    num_images: int = option(
        800, "synthetic training scenes (held-out: half as many, at most 120)", minimum=2
    )
    seed: int = option(0, "seed", minimum=0)
    sft_steps: int = option(450, "SFT steps on the traces", minimum=1)
    grpo_steps: int = option(100, "steps of each GRPO run (with prior sampling, plain)", minimum=1)
    eval_items: int = option(100, "eval items (hidden objects), each asked in every format", minimum=1)
    grounding_items: int = option(
        20,
        "the first N eval items' open questions (at most --eval-items) get the step-level grounding "
        "diagnostics (crm, evidence), for each of the four models; 0: none",
        minimum=0,
    )
    recipes: str = option(
        "tiny", "where sft.yaml, grpo_prior.yaml and grpo.yaml are: a directory, or a packaged recipe folder"
    )
