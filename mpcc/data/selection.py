"""Which instances make good hidden targets. Works on annotation records only (areas and boxes);
masks are decoded just for the few images that have crowd regions, to measure the overlap."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from pycocotools import mask as mask_utils

from mpcc.data.coco import CocoSource
from mpcc.data.masking import segmentation_to_rle
from mpcc.errors import ConfigError
from mpcc.options import option

MPCC_EVAL_SIZE = 1114  # items in the authors' MPCC-Eval
# Held out of training targets by default: one category per supercategory (person excluded).
DEFAULT_OOD = (
    "bicycle",
    "fire hydrant",
    "giraffe",
    "suitcase",
    "skateboard",
    "wine glass",
    "sandwich",
    "couch",
    "laptop",
    "microwave",
    "scissors",
)


@dataclass(frozen=True)
class SelectionConfig:
    """Defaults keep objects large enough to matter yet leave most of the scene visible."""

    options_group: ClassVar[str] = "target selection"

    min_area_frac: float = option(0.005, "smallest instance area / image area", minimum=0, maximum=1)
    max_area_frac: float = option(0.35, "largest instance area / image area", above=0, maximum=1)
    min_visible_frac: float = option(
        0.5, "image share that must stay outside the target's box", minimum=0, maximum=1
    )
    min_context: int = option(2, "fewest other annotated (non-crowd) instances in the image", minimum=0)
    max_crowd_overlap: float = option(
        0.1, "largest share of the target covered by crowd regions", minimum=0, maximum=1
    )
    max_per_image: int = option(3, "targets per image at most", minimum=1)
    exclude_categories: frozenset[str] = frozenset()  # e.g. held-out OOD categories, for training

    def __post_init__(self):
        if not 0 <= self.min_area_frac <= self.max_area_frac <= 1:
            raise ConfigError("need 0 <= min_area_frac <= max_area_frac <= 1")
        if not 0 <= self.min_visible_frac <= 1 or not 0 <= self.max_crowd_overlap <= 1:
            raise ConfigError("min_visible_frac and max_crowd_overlap must lie in [0, 1]")
        if self.min_context < 0 or self.max_per_image < 1:
            raise ConfigError("min_context must be >= 0 and max_per_image >= 1")


def _crowd_overlap(ann: dict, crowds: list[dict], height: int, width: int) -> float:
    target = segmentation_to_rle(ann["segmentation"], height, width)
    crowd = mask_utils.merge([segmentation_to_rle(c["segmentation"], height, width) for c in crowds])
    # With iscrowd=1 pycocotools' "iou" is intersection / area(target): the covered share.
    return float(mask_utils.iou([target], [crowd], [1])[0][0])


def select_targets(source: CocoSource, config: SelectionConfig, seed: int = 0) -> tuple[list[dict], Counter]:
    """Targets in (image id, annotation id) order, and how many instances each rule rejected."""
    coco = source.coco
    names = source.category_names
    rejected: Counter = Counter()
    targets: list[dict] = []
    for image_id in sorted(coco.imgs):
        image = coco.imgs[image_id]
        anns = coco.imgToAnns.get(image_id, [])
        crowds = [a for a in anns if a.get("iscrowd", 0)]
        solid = [a for a in anns if not a.get("iscrowd", 0)]
        rejected["crowd"] += len(crowds)
        image_area = image["width"] * image["height"]
        candidates = []
        for ann in solid:
            x, y, w, h = ann["bbox"]
            if names[ann["category_id"]] in config.exclude_categories:
                rejected["excluded_category"] += 1
            elif ann["area"] / image_area < config.min_area_frac:
                rejected["too_small"] += 1
            elif ann["area"] / image_area > config.max_area_frac:
                rejected["too_large"] += 1
            elif 1 - (w * h) / image_area < config.min_visible_frac:
                rejected["too_little_visible"] += 1
            elif len(solid) - 1 < config.min_context:
                rejected["too_little_context"] += 1
            elif (
                crowds
                and _crowd_overlap(ann, crowds, image["height"], image["width"]) > config.max_crowd_overlap
            ):
                rejected["crowd_overlap"] += 1
            else:
                candidates.append(ann)
        if len(candidates) > config.max_per_image:
            kept = random.Random(f"{seed}:{image_id}").sample(candidates, config.max_per_image)
            rejected["per_image_cap"] += len(candidates) - len(kept)
            candidates = sorted(kept, key=lambda a: a["id"])
        targets.extend(sorted(candidates, key=lambda a: a["id"]))
    return targets, rejected
