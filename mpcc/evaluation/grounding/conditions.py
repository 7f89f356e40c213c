"""Visual-reliance diagnostics: the same questions with the image changed, to see what the answer
really rests on.

- `blind`: the whole image blanked — what priors alone achieve;
- `context`: also hide the k context objects whose categories most predict the answer (co-occurrence
  statistics of the build) — the drop shows reliance on those regions;
- `shape`: only the hidden region's silhouette on a blank canvas — how much the masking mode gives
  away by shape alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from mpcc.data.build import load_stats
from mpcc.data.coco import load_coco
from mpcc.data.masking import MaskSpec, decode, region_mask, render_masked
from mpcc.data.render import mask_rle, render_targets, target_seed
from mpcc.errors import ConfigError
from mpcc.evaluation.config import IMAGE_DIAGNOSTICS
from mpcc.records import read_build

CANVAS = (128, 128, 128)  # blank canvas: mid gray, distinct from the black default fill


class Diagnostics:
    """Turns eval rows into their diagnostic variants; needs the build's source annotations and images
    for the context condition."""

    def __init__(self, data: str | Path, k: int = 2, images_dir: str | Path | None = None):
        record = read_build(data)
        self.spec = MaskSpec(**record.mask)
        self.seed = record.seed
        self.k = k
        self.images_dir = Path(images_dir or record.images_dir)
        self.stats, _ = load_stats(Path(data))
        self._annotations = record.annotations
        self._coco: COCO | None = None

    @property
    def coco(self) -> COCO:
        if self._coco is None:  # read the source only when the context condition needs it
            self._coco = load_coco(self._annotations).coco
        return self._coco

    def apply(self, row: dict, condition: str) -> dict:
        if condition == "blind":
            image = Image.new("RGB", (row["width"], row["height"]), CANVAS)
        elif condition == "shape":
            target = decode(mask_rle(row["mask"]))
            canvas = Image.new("RGB", (row["width"], row["height"]), CANVAS)
            image = render_masked(
                canvas, target, row["bbox"], self.spec, seed=target_seed(self.seed, row["ann_id"])
            )
        elif condition == "context":
            image = self.hide(row, self.predictive_context(row))
        else:
            raise ConfigError(f"unknown diagnostic {condition!r}; choose from {IMAGE_DIAGNOSTICS}")
        return {**row, "image": image}

    def predictive_context(self, row: dict) -> list[int]:
        """The k context annotations whose categories make the answer most likely."""
        return self.context_by_prediction(row)[: self.k]

    def context_by_prediction(self, row: dict) -> list[int]:
        """The row's visible context annotations (crowds left out), most predictive first: by
        P(answer | category) from the build's co-occurrence statistics, ties by annotation id."""
        answer = self.stats.index.get(row["solution"])
        scored = []
        for ann_id in row["context_ann_ids"]:
            ann = self.coco.anns.get(ann_id)
            if ann is None or ann.get("iscrowd", 0):
                continue
            name = self.coco.cats[ann["category_id"]]["name"]
            score = (
                self.stats.conditional([name])[answer]
                if answer is not None and name in self.stats.index
                else 0
            )
            scored.append((-score, ann_id))
        return [ann_id for _, ann_id in sorted(scored)]

    def hide(self, row: dict, ann_ids: list[int]) -> Image.Image:
        """The row's image rendered from its source with the target hidden, and the `ann_ids` objects
        hidden too (their segmentation, the target's fill)."""
        image = render_targets(
            self.images_dir / row["file_name"],
            [(row["ann_id"], row["mask"], row["bbox"])],
            self.spec,
            self.seed,
        )[row["ann_id"]]
        for ann_id in ann_ids:
            ann = self.coco.anns[ann_id]
            mask = self.coco.annToMask(ann).astype(bool)
            region = region_mask(mask, ann["bbox"], self.spec)
            image = render_masked(
                image,
                region,
                ann["bbox"],
                MaskSpec("segm", self.spec.fill),
                seed=target_seed(self.seed, ann_id),
            )
        return image

    def regions(self, row: dict) -> tuple[np.ndarray, np.ndarray]:
        """(evidence, target) HxW bool masks: the context objects' segmentations (crowds left out) minus
        what the fill hides, and the hidden region itself."""
        target = region_mask(decode(mask_rle(row["mask"])), row["bbox"], self.spec)
        evidence = np.zeros_like(target)
        for ann_id in row["context_ann_ids"]:
            ann = self.coco.anns.get(ann_id)
            if ann is not None and not ann.get("iscrowd", 0):
                evidence |= self.coco.annToMask(ann).astype(bool)
        return evidence & ~target, target
