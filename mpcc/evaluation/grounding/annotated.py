"""Evidence regions as another dataset annotates them: boxes in pixels, polygons or COCO RLE, read once when
the rows are loaded (`parse_regions`, errors name the row) and drawn as pixel masks when a measure needs
them (`regions_mask`).

Pixel (x, y) covers [x, x + 1) x [y, y + 1). A box [x0, y0, x1, y1) holds the pixels whose centres lie
inside it, which is how pycocotools draws a polygon (a rectangle polygon and the same box give the same
pixels), so every form follows one rule; `mpcc.evaluation.grounding.regions` then maps the mask onto
image tokens. Recognised forms (a row's value is one region or a list of them; missing or empty: none):
- a box: 4 numbers, `xyxy` (x0, y0, x1, y1) or `xywh` (COCO's x, y, width, height) by `--box-format`,
  or {"box": [...]} / {"bbox": [...]};
- a polygon: a flat list of 6 or more numbers (x, y, x, y, ...), a list of [x, y] points, or
  {"polygon": ...} with either;
- COCO RLE: {"size": [height, width], "counts": str or list of runs}, or {"rle": {...}}.

`AnnotatedRegions` gives such rows what `Diagnostics` gives mpcc builds: the blind image and the
(evidence, target) masks of the evidence measure. There is no hidden object, so the target is empty and
its mass null.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
from PIL import Image

from mpcc.data.masking import decode, segmentation_to_rle
from mpcc.errors import ConfigError, InputError
from mpcc.evaluation.config import BOX_FORMATS
from mpcc.evaluation.grounding.conditions import CANVAS

ANNOTATED_DIAGNOSTICS = ("blind", "evidence", "entropy")  # the rest need a hidden object, context, categories


def _numbers(value) -> bool:
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )


def _points(value) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) >= 3
        and all(_numbers(p) and len(p) == 2 for p in value)
    )


def _box(value, box_format: str, size: tuple[int, int]) -> tuple:
    if not (_numbers(value) and len(value) == 4):
        raise InputError(f"a box is 4 numbers, got {str(value)[:80]}")
    x0, y0, a, b = (float(v) for v in value)
    x1, y1 = (x0 + a, y0 + b) if box_format == "xywh" else (a, b)
    height, width = size
    if not (x0 < x1 and y0 < y1):
        raise InputError(f"box {list(value)} is empty as {box_format} (see --box-format)")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise InputError(f"box {list(value)} ({box_format}) lies outside the {width}x{height} image")
    return ("box", (x0, y0, x1, y1))


def _polygon(value) -> tuple:
    if not (_numbers(value) or _points(value)):
        raise InputError(f"a polygon is x, y numbers or [x, y] points, got {str(value)[:80]}")
    flat = [float(v) for p in value for v in (p if isinstance(p, (list, tuple)) else [p])]
    if len(flat) < 6 or len(flat) % 2:
        raise InputError(f"a polygon needs 3 or more (x, y) points, got {len(flat)} numbers")
    return ("polygon", flat)


def _rle(value, size: tuple[int, int]) -> tuple:
    if not isinstance(value, dict) or list(value.get("size") or []) != list(size):
        got = value.get("size") if isinstance(value, dict) else str(value)[:80]
        raise InputError(f"RLE size {got} is not the image's [height, width] {list(size)}")
    counts = value.get("counts")
    if not isinstance(counts, (str, bytes, list)):
        raise InputError(f"RLE counts must be a string or a list of runs, got {type(counts).__name__}")
    return ("rle", {"size": list(size), "counts": counts})


def _region(value, box_format: str, size: tuple[int, int]) -> tuple:
    if isinstance(value, dict):
        if value.get("counts") is not None:
            return _rle(value, size)
        if value.get("rle") is not None:
            return _rle(value["rle"], size)
        if value.get("polygon") is not None:
            return _polygon(value["polygon"])
        box = value["box"] if value.get("box") is not None else value.get("bbox")
        if box is not None:
            return _box(box, box_format, size)
        raise InputError(f"a region dict needs box, bbox, polygon, rle or size+counts, got {sorted(value)}")
    if _numbers(value) and len(value) == 4:
        return _box(value, box_format, size)
    if _numbers(value) or _points(value):
        return _polygon(value)
    raise InputError(f"not a box, polygon or RLE: {str(value)[:80]}")


def parse_regions(value, box_format: str, size: tuple[int, int]) -> list[tuple]:
    """The regions of one row's value (see the module docstring) for an image of `size` = (height, width)."""
    if box_format not in BOX_FORMATS:
        raise ConfigError(f"box format must be one of {BOX_FORMATS}, got {box_format!r}")
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return []
    if isinstance(value, dict) or _numbers(value) or _points(value):
        return [_region(value, box_format, size)]
    if not isinstance(value, (list, tuple)):
        raise InputError(f"not a box, polygon or RLE: {str(value)[:80]}")
    return [_region(v, box_format, size) for v in value]


def regions_mask(regions: list[tuple], size: tuple[int, int]) -> np.ndarray:
    """HxW bool mask of the union of `regions` (pixel centres inside a box; polygons and RLE as pycocotools
    draws them)."""
    height, width = size
    mask = np.zeros(size, dtype=bool)
    for kind, region in regions:
        if kind == "box":
            x0, y0, x1, y1 = region
            xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
            mask |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
        else:
            mask |= decode(segmentation_to_rle([region] if kind == "polygon" else region, height, width))
    return mask


class AnnotatedRegions:
    """The image conditions and evidence regions of rows read by `mpcc.evaluation.external` (rows carry
    `width`, `height` and their parsed `evidence`)."""

    def apply(self, row: dict, condition: str) -> dict:
        if condition != "blind":
            raise ConfigError(f"{condition!r} needs an mpcc build; other datasets: {ANNOTATED_DIAGNOSTICS}")
        return {**row, "image": Image.new("RGB", (row["width"], row["height"]), CANVAS)}

    def regions(self, row: dict) -> tuple[np.ndarray, np.ndarray]:
        size = (row["height"], row["width"])
        return regions_mask(row["evidence"], size), np.zeros(size, dtype=bool)
