"""Which categories appear together: the model-free statistics behind distractors and difficulty.

Counts come from the source annotations (every annotated instance, crowd regions included, counts
as presence in its image). Scoring an image's context can leave that image's own counts out
(`exclude`), so a category is never "predictable" merely because this very image was counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

SMOOTHING = 1.0  # add-one (Laplace) smoothing of the conditional probabilities


@dataclass
class CooccurrenceStats:
    """Image counts per category and per category pair, over a fixed category list."""

    names: list[str]
    supercategories: list[str]
    num_images: int
    image_counts: np.ndarray  # (K,) images containing category k
    pair_counts: np.ndarray  # (K, K) images containing both

    def __post_init__(self):
        self.index = {name: i for i, name in enumerate(self.names)}

    @classmethod
    def from_coco(cls, coco: COCO) -> CooccurrenceStats:
        cats = sorted(coco.cats.values(), key=lambda c: c["id"])
        column = {c["id"]: k for k, c in enumerate(cats)}
        presence = np.zeros((len(coco.imgs), len(cats)), dtype=np.int64)
        row = {image_id: r for r, image_id in enumerate(sorted(coco.imgs))}
        for ann in coco.anns.values():
            presence[row[ann["image_id"]], column[ann["category_id"]]] = 1
        return cls(
            names=[c["name"] for c in cats],
            supercategories=[c["supercategory"] for c in cats],
            num_images=len(row),
            image_counts=presence.sum(0),
            pair_counts=presence.T @ presence,
        )

    def conditional(self, context: Iterable[str], exclude: Iterable[str] = ()) -> np.ndarray:
        """Mean over context categories s of P(c | s), smoothed; the category prior when context is empty.

        `exclude` is the set of categories present in the scored image, whose own counts are removed
        (leave-one-out) when the statistics were computed from that image's source.
        """
        K = len(self.names)
        own = np.zeros(K, dtype=np.int64)
        own[[self.index[n] for n in set(exclude)]] = 1
        ctx = sorted({self.index[n] for n in context})
        if not ctx:
            counts = self.image_counts - own
            return (counts + SMOOTHING) / (counts.sum() + SMOOTHING * K)
        pairs = self.pair_counts[ctx] - own[ctx, None] * own[None, :]
        given = (self.image_counts[ctx] - own[ctx])[:, None]
        return ((pairs + SMOOTHING) / (given + SMOOTHING * K)).mean(0)

    def to_json(self) -> dict:
        return {
            "names": self.names,
            "supercategories": self.supercategories,
            "num_images": self.num_images,
            "image_counts": self.image_counts.tolist(),
            "pair_counts": self.pair_counts.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict) -> CooccurrenceStats:
        return cls(
            names=list(data["names"]),
            supercategories=list(data["supercategories"]),
            num_images=int(data["num_images"]),
            image_counts=np.asarray(data["image_counts"], dtype=np.int64),
            pair_counts=np.asarray(data["pair_counts"], dtype=np.int64),
        )


def rank_score(scores: np.ndarray, target: int, candidates: Sequence[int]) -> float:
    """Where `target` ranks among `candidates` by score, as 1 (top) .. 0 (bottom); ties count half."""
    others = np.asarray([c for c in candidates if c != target])
    if others.size == 0:
        return 1.0
    below = (scores[others] < scores[target]).sum() + 0.5 * (scores[others] == scores[target]).sum()
    return float(below / others.size)


def save_stats(stats: CooccurrenceStats, extra: dict, path: Path) -> None:
    path.write_text(json.dumps({**stats.to_json(), **extra}, sort_keys=True), encoding="utf-8")
