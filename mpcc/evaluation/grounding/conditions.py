"""Visual-reliance diagnostics: the same questions with the image changed, to see what the answer
really rests on.

- `blind`: the whole image blanked — what priors alone achieve;
- `context`: also hide the k context objects whose categories most predict the answer (co-occurrence
  statistics of the build) — the drop shows reliance on those regions;
- `shape`: only the hidden region's silhouette on a blank canvas — how much the masking mode gives
  away by shape alone.

Contrastive region masking (`mpcc.evaluation.grounding.crm`) renders here too: objects hidden with a
fill of choice (`hide`, `ablate`) and its control, regions of the same shape and area hidden away from
every object (`controls`, `place_like`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from mpcc.data.build import load_stats
from mpcc.data.coco import load_coco
from mpcc.data.masking import PATCH_MODES, MaskSpec, decode, dilate, region_mask, render_masked
from mpcc.data.render import mask_rle, render_targets, target_seed
from mpcc.errors import ConfigError
from mpcc.evaluation.config import CRM_FILLS, IMAGE_DIAGNOSTICS
from mpcc.records import read_build
from mpcc.seeds import mix_seed

CANVAS = (128, 128, 128)  # blank canvas: mid gray, distinct from the black default fill


class Diagnostics:
    """Turns eval rows into their diagnostic variants; needs the build's source annotations and images
    for the context condition."""

    def __init__(self, data: str | Path, k: int = 2, images_dir: str | Path | None = None):
        record = read_build(data)
        self.spec = MaskSpec(**record.mask)
        if self.spec.mode in PATCH_MODES:  # its regions are not objects': hiding "an object" means nothing
            raise ConfigError(
                f"{data}: built with mask mode {self.spec.mode!r} (a training ablation's control); image "
                "diagnostics need a build whose mask hides the whole target"
            )
        self.seed = record.seed
        self.k = k
        self.images_dir = Path(images_dir or record.images_dir)
        self.stats, _ = load_stats(Path(data))
        self._annotations = record.annotations
        self._coco: COCO | None = None
        self._row_memo: tuple[tuple, dict] = ((), {})

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
            image = self.hide(row, self.predictive_context(row), fill="target")
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

    def hide(self, row: dict, ann_ids: list[int], fill: str = "target") -> Image.Image:
        """The row's masked image with the `ann_ids` objects hidden too: each object's region under the
        build's mask mode, painted with `fill` (`ablate`). Made once per row in hand (`_memo`): CRM asks
        for an object alone both as its evidence ablation and to size its control, and the `context`
        condition for each of an item's rows."""
        return self._memo(
            row, ("hide", tuple(ann_ids), fill),
            lambda: self.ablate(row, [(self.object_region(a), a) for a in ann_ids], fill),
        )  # fmt: skip

    def _memo(self, row: dict, key: tuple, make):
        """`make()`, kept while the rows asked about are of one target (the last one's images only: an
        item's rows and its CRM ablations come together). The images kept are never changed in place."""
        target = (row["file_name"], row["ann_id"])
        if self._row_memo[0] != target:
            self._row_memo = (target, {})
        made = self._row_memo[1]
        if key not in made:
            made[key] = make()
        return made[key]

    def controls(self, row: dict, sets: list[list[int]], fill: str) -> list[tuple[Image.Image, float]]:
        """(image, overlap) per set of annotation ids: the control of `hide(row, ids, fill)`. Each object's
        region moves, same shape and area, to a seeded place (`place_like`) away from the target's region,
        every annotated object (crowds too) and the set's controls placed before it, and is painted the
        flat colour that changes the image as much as hiding the object itself does under `fill`
        (`matched_colour`): a model that reacts to any change of that size reacts to both alike.
        overlap = the share of the set's moved pixels that could not avoid the objects (0 when a free
        place exists)."""
        base = np.array(self.hide(row, [], fill))
        target = self.target_region(row)
        region = {a: self.object_region(a) for a in row["context_ann_ids"] if a in self.coco.anns}
        objects = np.logical_or.reduce([target, *region.values()])
        spectrum = avoid_spectrum(objects)  # every set's first object avoids just the objects
        change = {
            a: int(np.abs(np.asarray(self.hide(row, [a], fill), int) - base).sum())
            for a in dict.fromkeys(a for ids in sets for a in ids)
        }
        controls = []
        for ann_ids in sets:
            pixels, avoid, overlap, area = base.copy(), objects, 0, 0
            for ann_id in ann_ids:
                seed = mix_seed(self.seed, row["ann_id"], ann_id)
                moved, hit = place_like(region[ann_id], avoid, seed, spectrum if avoid is objects else None)
                painted = moved & ~target  # the target stays hidden as built
                pixels[painted] = matched_colour(base[painted], change[ann_id])
                avoid = avoid | moved
                overlap, area = overlap + hit, area + int(moved.sum())
            controls.append((Image.fromarray(pixels), overlap / max(area, 1)))
        return controls

    def ablate(self, row: dict, regions: list[tuple[np.ndarray, int]], fill: str) -> Image.Image:
        """The row's masked image (target hidden as built) with each (region, annotation id) hidden too.
        `target`: the build's fill (seeded by the id, as a target's); `surround`: a fill that is not the
        target's, so the image does not show several identical masks under a question about "the masked
        object": each region takes the mean colour of the pixels in a band around it (width max(4 px,
        10% of the region's longer side)) that no hidden region covers; with no such pixel, the mean of
        all visible pixels; with none, the blank canvas's gray. Model-free and deterministic."""
        image = self._memo(row, ("masked",), lambda: self._masked(row))
        if fill == "target":
            spec = MaskSpec("segm", self.spec.fill)
            for region, ann_id in regions:
                image = render_masked(image, region, _box(region), spec, seed=target_seed(self.seed, ann_id))
            return image
        if fill != "surround":
            raise ConfigError(f"unknown ablation fill {fill!r}; choose from {CRM_FILLS}")
        pixels = np.array(image)
        target = hidden = self.target_region(row)
        for region, _ in regions:
            hidden = hidden | region
        colours = []
        for region, _ in regions:
            x, y, w, h = _box(region)
            band = dilate(region, max(4, round(0.1 * max(w, h)))) & ~hidden
            source = pixels[band if band.any() else ~hidden]
            colours.append(np.rint(source.mean(0)) if len(source) else CANVAS)
        for (region, _), colour in zip(regions, colours):
            pixels[region & ~target] = colour  # the target stays hidden as built
        return Image.fromarray(pixels)

    def _masked(self, row: dict) -> Image.Image:
        """The row's image rendered from the source with its target hidden, as the build did."""
        return render_targets(
            self.images_dir / row["file_name"],
            [(row["ann_id"], row["mask"], row["bbox"])],
            self.spec,
            self.seed,
        )[row["ann_id"]]

    def object_region(self, ann_id: int) -> np.ndarray:
        """The pixels that hide annotation `ann_id` under the build's mask mode (as its target would be)."""
        ann = self.coco.anns[ann_id]
        return region_mask(self.coco.annToMask(ann).astype(bool), ann["bbox"], self.spec)

    def target_region(self, row: dict) -> np.ndarray:
        """The pixels the row's own fill hides."""
        return region_mask(decode(mask_rle(row["mask"])), row["bbox"], self.spec)

    def regions(self, row: dict) -> tuple[np.ndarray, np.ndarray]:
        """(evidence, target) HxW bool masks: the context objects' segmentations (crowds left out) minus
        what the fill hides, and the hidden region itself."""
        target = self.target_region(row)
        evidence = np.zeros_like(target)
        for ann_id in row["context_ann_ids"]:
            ann = self.coco.anns.get(ann_id)
            if ann is not None and not ann.get("iscrowd", 0):
                evidence |= self.coco.annToMask(ann).astype(bool)
        return evidence & ~target, target


def place_like(
    region: np.ndarray, avoid: np.ndarray, seed: int, spectrum: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """(moved, overlap): `region` translated, whole shape and area, to a place inside the image where it
    covers the fewest `avoid` pixels (overlap: how many), a seeded choice among the places that tie.
    Every translation is scored at once: the cross-correlation of `avoid` with the region's crop (FFT);
    `spectrum`: `avoid_spectrum(avoid)` when already computed."""
    x, y, w, h = _box(region)
    moved = np.zeros_like(region)
    if w == 0:
        return moved, 0
    crop = region[y : y + h, x : x + w]
    height, width = region.shape
    spectrum = avoid_spectrum(avoid) if spectrum is None else spectrum
    size = _fft_size(region.shape)
    product = spectrum * np.conj(np.fft.rfft2(crop.astype(float), s=size))
    hits = np.rint(np.fft.irfft2(product, s=size))[: height - h + 1, : width - w + 1]
    places = np.argwhere(hits == hits.min())
    top, left = places[np.random.default_rng(seed).integers(len(places))]
    moved[top : top + h, left : left + w] = crop
    return moved, int(hits.min())


def avoid_spectrum(avoid: np.ndarray) -> np.ndarray:
    """The FFT of an `avoid` mask that `place_like` correlates with."""
    return np.fft.rfft2(avoid.astype(float), s=_fft_size(avoid.shape))


def _fft_size(shape: tuple[int, int]) -> tuple[int, int]:
    """Each side raised to the next product of 2, 3 and 5 (an FFT of a side with a large prime factor is
    slow). No translation that stays inside the image wraps around, so the scores are unchanged."""
    return _smooth(shape[0]), _smooth(shape[1])


def _smooth(n: int) -> int:
    """The least m >= n with no prime factor above 5."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def matched_colour(pixels: np.ndarray, change: float) -> np.ndarray:
    """The flat colour c whose total absolute change sum |pixels - c| (over pixels and channels) is
    `change`, or as near as 0..255 allows: c moves from the pixels' per-channel median (the least change)
    straight toward the farthest corner of the colour cube, along which the change only grows; bisection.
    `pixels`: (n, 3)."""
    values = pixels.astype(float)
    if len(values) == 0:
        return np.array(CANVAS)
    start = np.median(values, 0)
    far = np.where(start > 127.5, 0.0, 255.0)

    def colour(t: float) -> np.ndarray:
        return np.rint(start + t * (far - start))

    low, high = 0.0, 1.0
    for _ in range(20):
        middle = (low + high) / 2
        if np.abs(values - colour(middle)).sum() < change:
            low = middle
        else:
            high = middle
    return colour(high)


def _box(region: np.ndarray) -> tuple[int, int, int, int]:
    """[x, y, w, h] of the True pixels ((0, 0, 0, 0) for none)."""
    ys, xs = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    if ys.size == 0:
        return 0, 0, 0, 0
    return int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)
