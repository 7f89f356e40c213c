"""Hide one instance: which pixels to cover (the region) and what to paint there (the fill).

`render_masked` is a pure function of (image, target mask, bbox, spec, seed): the same call gives
the same bytes at build time and, lazily, at training time. In the semantic modes (MASK_MODES) the
region is a superset of the instance's own mask, and the optional feather only fades *outward*: every
pixel of the target is fully replaced by the fill.

`random_patch` (PATCH_MODES) is the control of semantic masking, for training ablations (`mpcc study`):
a shape-free rectangle of exactly the target mask's pixel count (the target box's aspect ratio; whole
rows, then one partial row), placed at a seeded random spot: its centre is a target pixel drawn
uniformly, and the rectangle is shifted to lie inside the image. It always hides that target pixel,
usually leaves part of the object visible and hides background or other objects instead of the rest.
The question and its answer stay those of the target ("which object is hidden under the mask?"), so
the row stays answerable: part of the target is hidden, and what shows of it plus the context name it.
A patch away from the object was rejected: it would hide no object (background only) or leave the
target fully visible without singling it out among the scene's objects, so the question would have no
defined answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils

from mpcc.errors import ConfigError, InputError
from mpcc.options import option

MASK_MODES = ("segm", "segm_dilated", "hull", "bbox")  # semantic: the region covers the whole target
PATCH_MODES = ("random_patch",)  # the ablation's control: same area, not the object's shape or place
ALL_MODES = MASK_MODES + PATCH_MODES
FILLS = ("black", "gray", "mean", "blur", "noise")
FILL_WORDS = {"black": "black", "gray": "gray", "mean": "flat-coloured", "blur": "blurred", "noise": "noisy"}


@dataclass(frozen=True)
class MaskSpec:
    """How a target is hidden. `segm_dilated` grows the mask by max(dilate_px, dilate_frac * box side);
    `random_patch` hides a rectangle of the mask's area at a seeded spot on the target (module docstring)."""

    options_group: ClassVar[str] = "masking"

    mode: str = option(
        "segm_dilated",
        "region to hide: the instance mask, the mask grown by a margin, its convex hull, its box "
        "(the authors' setting), or random_patch: a rectangle of the mask's area at a seeded spot on the "
        "target that leaves part of it visible (the semantic-masking ablation's control)",
        choices=ALL_MODES,
        flag="mask_mode",
    )
    fill: str = option("black", "what covers the region", choices=FILLS)
    dilate_px: int = option(4, "segm_dilated: grow by at least this many pixels", minimum=0)
    dilate_frac: float = option(0.05, "segm_dilated: or by this fraction of the box's longer side", minimum=0)
    feather: float = option(
        0.0, "Gaussian radius (px) of a soft edge that fades outward only; 0: hard edge", minimum=0
    )

    def __post_init__(self):
        if self.mode not in ALL_MODES:
            raise ConfigError(f"mask mode {self.mode!r} is not one of {ALL_MODES}")
        if self.fill not in FILLS:
            raise ConfigError(f"fill {self.fill!r} is not one of {FILLS}")
        if self.dilate_px < 0 or self.dilate_frac < 0 or self.feather < 0:
            raise ConfigError("dilate_px, dilate_frac and feather must be >= 0")


def segmentation_to_rle(segmentation, height: int, width: int) -> dict:
    """One compressed RLE for polygons (one or several parts), uncompressed or compressed RLE."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    rle = dict(segmentation)
    if isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode("ascii")
    return rle


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode(rle).astype(bool)


def _window(bbox, height: int, width: int, margin: int) -> tuple[slice, slice]:
    x, y, w, h = bbox
    x0, y0 = max(0, math.floor(x) - margin), max(0, math.floor(y) - margin)
    x1, y1 = min(width, math.ceil(x + w) + margin), min(height, math.ceil(y + h) + margin)
    return slice(y0, y1), slice(x0, x1)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square (Chebyshev) dilation via an integral image: O(pixels) whatever the radius."""
    if radius <= 0:
        return mask
    padded = np.pad(mask, radius + 1).astype(np.int32)
    s = padded.cumsum(0).cumsum(1)
    k = 2 * radius + 1
    window = s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]
    return window[: mask.shape[0], : mask.shape[1]] > 0


def _hull(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of the pixels of `mask` (monotone chain over each row's two extreme pixels)."""
    rows = np.flatnonzero(mask.any(1))
    if rows.size == 0:
        return mask
    left = mask[rows].argmax(1)
    right = mask.shape[1] - 1 - mask[rows, ::-1].argmax(1)
    points = sorted({(int(x), int(y)) for y, lx, rx in zip(rows, left, right) for x in (lx, rx)})

    def half(pts):
        chain: list[tuple[int, int]] = []
        for p in pts:
            while (
                len(chain) >= 2
                and (chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])
                <= 0
            ):
                chain.pop()
            chain.append(p)
        return chain[:-1]

    polygon = half(points) + half(points[::-1])
    canvas = Image.new("1", (mask.shape[1], mask.shape[0]))
    ImageDraw.Draw(canvas).polygon(polygon or points, fill=1, outline=1)
    return np.asarray(canvas) | mask


def _extent(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """[x, y, w, h] of the True pixels, or None when there are none."""
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if ys.size == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)


def random_patch(target: np.ndarray, bbox, seed: int) -> np.ndarray:
    """`random_patch`'s region (module docstring): exactly `target.sum()` pixels (the image's at most), in
    a rectangle of the box's aspect ratio whose last row may be partial, around a seeded target pixel."""
    height, width = target.shape
    area = min(int(target.sum()), height * width)
    region = np.zeros_like(target)
    if area == 0:
        return region
    aspect = bbox[2] / bbox[3] if bbox[2] > 0 and bbox[3] > 0 else 1.0
    cols = min(width, area, max(1, round(math.sqrt(area * aspect))))
    full, rest = divmod(area, cols)
    rows = full + (rest > 0)
    if rows > height:  # too tall for the image: as wide as needed to fit
        cols = math.ceil(area / height)
        full, rest = divmod(area, cols)
        rows = full + (rest > 0)
    ys, xs = np.nonzero(target)
    pick = np.random.default_rng([seed, 0x9A7C]).integers(len(ys))
    cy, cx = int(ys[pick]), int(xs[pick])
    top = min(max(0, cy - rows // 2), height - rows)
    left = min(max(0, cx - cols // 2), width - cols)
    # the partial row goes on the side away from the drawn pixel, which so stays hidden
    first = top + 1 if rest and cy - top >= rows / 2 else top
    region[first : first + full, left : left + cols] = True
    if rest:
        region[top if first > top else top + full, left : left + rest] = True
    return region


def _region(
    target: np.ndarray, bbox, spec: MaskSpec, seed: int = 0
) -> tuple[tuple[slice, slice], np.ndarray]:
    """The pixels to hide as (window, mask inside it). In the semantic modes the window spans the
    annotated box and every target pixel, so the region covers the target even when box and mask
    disagree; `random_patch`'s window is the whole image."""
    height, width = target.shape
    if spec.mode == "random_patch":
        return (slice(0, height), slice(0, width)), random_patch(target, bbox, seed)
    extent = _extent(target)
    box = bbox
    if extent is not None:
        x0, y0 = min(bbox[0], extent[0]), min(bbox[1], extent[1])
        x1, y1 = max(bbox[0] + bbox[2], extent[0] + extent[2]), max(bbox[1] + bbox[3], extent[1] + extent[3])
        box = (x0, y0, x1 - x0, y1 - y0)
    if spec.mode == "segm_dilated":
        radius = max(spec.dilate_px, round(spec.dilate_frac * max(bbox[2], bbox[3])))
        win = _window(box, height, width, radius)
        return win, dilate(target[win], radius)
    win = _window(box, height, width, 0)
    inside = target[win]
    if spec.mode == "segm":
        return win, inside
    if spec.mode == "hull":
        return win, _hull(inside)
    region = np.zeros_like(inside)
    ys, xs = _window(bbox, height, width, 0)
    region[
        ys.start - win[0].start : ys.stop - win[0].start, xs.start - win[1].start : xs.stop - win[1].start
    ] = True
    return win, region | inside


def region_mask(target: np.ndarray, bbox, spec: MaskSpec, seed: int = 0) -> np.ndarray:
    """The pixels to hide, as an HxW bool mask: a superset of `target` in the semantic modes; `seed` is
    render_masked's (it places a random patch)."""
    win, inside = _region(target, bbox, spec, seed)
    region = np.zeros_like(target)
    region[win] = inside
    return region


def _fill_pixels(image: np.ndarray, region_bbox, spec: MaskSpec, seed: int) -> np.ndarray:
    """The fill as an image-sized float array (only the masked window is read)."""
    if spec.fill == "black":
        return np.zeros(3)
    if spec.fill == "gray":
        return np.full(3, 128.0)
    if spec.fill == "mean":
        return np.rint(image.reshape(-1, 3).mean(0))
    if spec.fill == "noise":
        return np.random.default_rng(seed).integers(0, 256, image.shape, dtype=np.uint8).astype(float)
    radius = max(8.0, 0.25 * max(region_bbox[2], region_bbox[3]))
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)), dtype=float)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode, where `convert("RGB")` clips 16-bit and 32-bit samples to white and
    drops transparency. Integer modes (I;16, I;16B, ...; I, as Pillow reads some 16-bit files) are
    16-bit samples: clipped to 0-65535, then the high byte (v >> 8, as Pillow reads 16-bit RGB files);
    F is on PIL's 0-255 scale, rounded and clipped (NaN: 0); transparency (alpha, a palette's or a
    colour key) is composited onto white; other modes convert as PIL does (CMYK: (255-C)(255-K)/255).
    Always a new, loaded image: the caller may close a file it came from."""
    if image.mode.startswith("I") or image.mode == "F":
        samples = np.asarray(image)
        if image.mode == "F":
            grey = np.rint(np.nan_to_num(samples, nan=0.0)).clip(0, 255)
        else:
            grey = samples.astype(np.int64).clip(0, 65535) >> 8
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    if image.has_transparency_data:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
        rgb, alpha = rgba[..., :3], rgba[..., 3:]
        return Image.fromarray(((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8))
    return image.convert("RGB")


def render_masked(image: Image.Image, target: np.ndarray, bbox, spec: MaskSpec, seed: int = 0) -> Image.Image:
    """`image` (converted by `to_rgb`) with the target's region replaced by the fill; deterministic in all
    arguments.

    Work is confined to the region's window, so cost follows the object's size, not the image's.
    """
    pixels = np.array(image if image.mode == "RGB" else to_rgb(image))
    if target.shape != pixels.shape[:2]:
        raise InputError(f"mask shape {target.shape} differs from image shape {pixels.shape[:2]}")
    win, inside = _region(target, bbox, spec, seed)
    extent = _extent(inside)
    if extent is None:
        return Image.fromarray(pixels)
    region_bbox = (extent[0] + win[1].start, extent[1] + win[0].start, extent[2], extent[3])
    fill = _fill_pixels(pixels, region_bbox, spec, seed)
    if spec.feather == 0:  # hard edge: a plain assignment inside the window, no blending
        pixels[win][inside] = fill if fill.ndim == 1 else fill[win][inside]
        return Image.fromarray(pixels)
    region = np.zeros(target.shape, dtype=bool)
    region[win] = inside
    soft_win = _window(region_bbox, *target.shape, math.ceil(3 * spec.feather))
    alpha = region[soft_win].astype(np.float64)
    soft = Image.fromarray((alpha * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(spec.feather))
    a = np.maximum(alpha, np.asarray(soft, dtype=np.float64) / 255.0)[..., None]
    fill_win = fill[soft_win] if fill.ndim == 3 else fill
    pixels[soft_win] = np.rint(pixels[soft_win] * (1.0 - a) + fill_win * a).astype(np.uint8)
    return Image.fromarray(pixels)
