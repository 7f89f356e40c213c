"""The study's data: the demo's scenes, train build (semantic masks, traces imported) and eval build,
plus the random-patch twin of the train build (same targets, formats, questions and traces; only the
pixels hidden differ: mpcc.data.masking's `random_patch`), and the check that the OOD column holds only
categories no training row has as its target."""

from __future__ import annotations

from pathlib import Path

from mpcc.data.masking import MaskSpec
from mpcc.demo import traced_train_set, work_layout


def layout(out: Path) -> dict[str, Path]:
    """The data folders by name: the demo's own (mpcc.demo.work_layout under `out`) and the twin's."""
    demo = work_layout(out)
    return {
        **{name: demo[name] for name in ("build", "train", "eval", "preview")},
        "patch_build": out / "data" / "train_patch_build",
        "train_patch": out / "data" / "train_patch",
    }


def patch_train_set(out: Path, seed: int, paths: dict[str, Path]) -> None:
    """The train build with random-patch masks, its traces imported as the semantic build's are."""
    scenes, mask = out / "scenes" / "train", MaskSpec(mode="random_patch")
    traced_train_set(scenes, paths["patch_build"], paths["train_patch"], seed, mask=mask)


def target_categories(build_dir: Path) -> set[str]:
    """The categories a train build's rows have as their target (hidden object, hence answer)."""
    from datasets import load_from_disk

    return set(load_from_disk(str(build_dir)).select_columns(["category"])["category"])


def exposure(build_dir: Path, names: set[str]) -> dict[str, int]:
    """How many of a train build's rows show one of `names` other than as the target: as a visible
    context object, among the answer options (a distractor, or a yes/no row's candidate), or named in
    the reasoning trace. The OOD split holds categories out as *targets* only, as COCO's held-out
    categories are; these counts say how much of them training still sees."""
    from datasets import load_from_disk

    rows = load_from_disk(str(build_dir)).select_columns(["context", "options", "candidate", "reasoning"])
    counts = {"rows": len(rows), "context": 0, "options": 0, "trace": 0}
    for row in rows:
        counts["context"] += bool(names & set(row["context"]))
        counts["options"] += bool(names & {*row["options"], row["candidate"]})
        counts["trace"] += any(name in (row["reasoning"] or "") for name in names)
    return counts
