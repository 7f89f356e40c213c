"""Image regions on the model's vision-token grid.

A Qwen-VL processor resizes the whole image (no crop) to a multiple of `patch_size x merge_size`
pixels, and each image token the language model sees is one merged cell of that resized image,
laid out row-major over `image_grid_thw` = (t, h, w) patches, i.e. (h / merge) x (w / merge) tokens.
Cell (i, j) is therefore the preimage box [i H / rows, (i + 1) H / rows) x [j W / cols, (j + 1) W / cols)
of the original H x W image. A region's *coverage* of a cell is the share of that box's area inside
the region (fractional pixels counted by area), and a token belongs to the region when its coverage is
at least `threshold` (default one half).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mpcc.errors import ValidationError

COVERAGE_THRESHOLD = 0.5


def token_grid(image_grid_thw, merge_size: int) -> tuple[int, int]:
    """(rows, cols) of image tokens for one image's `image_grid_thw` row (t, h, w in patches)."""
    t, h, w = (int(x) for x in image_grid_thw)
    if t != 1 or h % merge_size or w % merge_size:
        raise ValidationError(
            f"image_grid_thw {(t, h, w)} is not one still image in {merge_size}x{merge_size} cells"
        )
    return h // merge_size, w // merge_size


def cell_coverage(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(rows, cols) share of each cell's preimage box inside the HxW bool `mask` (area-exact box filter)."""
    rows, cols = grid
    if mask.ndim != 2 or min(mask.shape) == 0:
        raise ValidationError(f"a region mask must be a non-empty 2-D array, got shape {mask.shape}")
    image = Image.fromarray(mask.astype(np.float32), mode="F")
    return np.asarray(image.resize((cols, rows), resample=Image.Resampling.BOX), dtype=np.float64)


def region_tokens(mask: np.ndarray, grid: tuple[int, int], threshold: float = COVERAGE_THRESHOLD):
    """Flat bool per image token (row-major): does the region cover at least `threshold` of its cell?"""
    return (cell_coverage(mask, grid) >= threshold - 1e-6).reshape(-1)
