"""Image regions on the model's image tokens.

Each model family (mpcc.families) says how an image becomes tokens: blocks of `rows x cols` tokens in
token order, each block a regular grid over a box of the original image (Qwen-VL: one block over the whole
image; a tiling processor: one block per tile, then one over the whole image). Cell (i, j) of a block over
the box [x0, x1) x [y0, y1) of an H x W image is the preimage box
[y0 + i (y1 - y0) / rows, ...) x [x0 + j (x1 - x0) / cols, ...). A region's *coverage* of a cell is the
share of that box's area inside the region (fractional pixels counted by area), and a token belongs to the
region when its coverage is at least `threshold` (default one half).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from mpcc.errors import ValidationError
from mpcc.families import WHOLE_IMAGE, Grid
from mpcc.families.qwen import token_grid

COVERAGE_THRESHOLD = 0.5


def cell_coverage(mask: np.ndarray, grid: tuple[int, int], box=WHOLE_IMAGE) -> np.ndarray:
    """(rows, cols) share of each cell's preimage box inside the HxW bool `mask` (area-exact box filter);
    the cells divide `box` (left, top, right, bottom in fractions of the image)."""
    rows, cols = grid
    if mask.ndim != 2 or min(mask.shape) == 0:
        raise ValidationError(f"a region mask must be a non-empty 2-D array, got shape {mask.shape}")
    height, width = mask.shape
    # a box past the image's edge (a padded canvas): the mask padded with "outside" to hold it
    pad_x = math.ceil(max(0.0, -box[0], box[2] - 1) * width)
    pad_y = math.ceil(max(0.0, -box[1], box[3] - 1) * height)
    source = (
        box[0] * width + pad_x, box[1] * height + pad_y, box[2] * width + pad_x, box[3] * height + pad_y
    )  # fmt: skip
    mask = np.pad(mask, ((pad_y, pad_y), (pad_x, pad_x)))
    image = Image.fromarray(mask.astype(np.float32), mode="F")
    resized = image.resize((cols, rows), resample=Image.Resampling.BOX, box=source)
    return np.asarray(resized, dtype=np.float64)


def region_tokens(
    mask: np.ndarray, grid: tuple[int, int], threshold: float = COVERAGE_THRESHOLD, box=WHOLE_IMAGE
):
    """Flat bool per image token (row-major): does the region cover at least `threshold` of its cell?"""
    return (cell_coverage(mask, grid, box) >= threshold - 1e-6).reshape(-1)


def grids_tokens(mask: np.ndarray, grids: list[Grid], threshold: float = COVERAGE_THRESHOLD) -> np.ndarray:
    """`region_tokens` over each of an image's token blocks, in token order (a block without a preimage box
    in no region)."""
    return np.concatenate(
        [
            np.zeros(rows * cols, bool) if box is None else region_tokens(mask, (rows, cols), threshold, box)
            for rows, cols, box in grids
        ]
    )


__all__ = ["COVERAGE_THRESHOLD", "cell_coverage", "grids_tokens", "region_tokens", "token_grid"]
