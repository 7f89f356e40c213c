"""Procedural COCO-format scenes with learnable context rules.

Real COCO is large and not always at hand, so the demo and the tests run on data made here instead:
:func:`generate_scenes` writes a small but *real* instances dataset (JPEG images plus ``instances.json``)
that pycocotools and any COCO loader read unchanged, and :func:`generate_annotations` builds a
COCO-train-sized annotation set, without rendering anything, for benchmarks.

Scene model
-----------
* Every image shows one scene type from :data:`SCENES` (kitchen, street, ...). The scene fixes a
  background gradient and a set of categories that belong together.
* A rendered image holds 3-8 objects. Each object comes from the scene's set with probability 0.9 and
  from all 80 COCO categories otherwise, so an object's context (background and neighbours) predicts it
  without giving it away.
* Each category has a fixed look derived from its position in the COCO table: a colour, a shape kind
  (ellipse, rectangle, rounded rectangle, triangle, star, or a two-part "twin" blob), an aspect ratio
  and a typical size. Shape, colour and context are therefore all learnable cues.
* Objects are painted in order, later ones occluding earlier ones. A placement that would hide more
  than 60% of an earlier object is redrawn (an object that finds no place in 12 tries is left out), so
  every annotated object stays clearly visible.
* About 5% of images are empty, and about 3% (street scenes) contain a crowd of small people that is
  annotated as one ``iscrowd=1`` region.

Segmentations follow COCO conventions: an unoccluded object keeps its exact drawn polygon (one list per
part); an occluded object stores its visible pixels as compressed RLE (``counts`` as str so the JSON is
valid); a crowd uses uncompressed RLE (``counts`` as a list of ints). ``area`` and ``bbox`` come from
pycocotools applied to the stored segmentation, so they agree with ``COCO.annToMask``.

Because the generator knows each scene's type and rules, it can also write a reasoning trace per object
(:func:`scene_trace`, ``generate_scenes(..., traces=True)``) that is true of the image: the demo's
traces, imported with ``mpcc annotate import`` like a teacher's.
"""

from __future__ import annotations

import colorsys
import gc
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from mpcc.data.coco_categories import COCO_CATEGORIES
from mpcc.errors import ConfigError
from mpcc.options import option
from mpcc.rewards import trace_completion
from mpcc.text.names import with_article

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    """A scene type: the categories that go together in it and its background gradient (top, bottom)."""

    categories: tuple[str, ...]
    top: RGB
    bottom: RGB


def _scene(categories: str, top: RGB, bottom: RGB) -> Scene:
    return Scene(tuple(name.strip() for name in categories.split(",")), top, bottom)


SCENES: Mapping[str, Scene] = MappingProxyType(
    {
        "kitchen": _scene(
            "cup, fork, knife, spoon, bowl, dining table, oven, microwave, sink, refrigerator, bottle, "
            "wine glass, banana, apple",
            (236, 222, 196),
            (188, 176, 160),
        ),
        "street": _scene(
            "car, bus, truck, traffic light, stop sign, person, bicycle, motorcycle, fire hydrant, "
            "parking meter",
            (150, 190, 230),
            (92, 92, 98),
        ),
        "living_room": _scene(
            "couch, tv, remote, chair, potted plant, book, clock, vase, cat, teddy bear",
            (206, 186, 160),
            (140, 104, 84),
        ),
        "beach_park": _scene(
            "umbrella, surfboard, kite, frisbee, dog, person, sports ball, boat, bench",
            (118, 188, 240),
            (232, 212, 160),
        ),
        "farm_wild": _scene(
            "cow, sheep, horse, bird, giraffe, elephant, zebra, bear", (166, 212, 240), (88, 150, 70)
        ),
        "office": _scene(
            "laptop, keyboard, mouse, cell phone, book, chair, cup, scissors", (226, 228, 232), (156, 126, 98)
        ),
    }
)
"""Scene types and their context rules; categories may belong to several scenes (e.g. person, book)."""

IMAGE_SIZE = (384, 288)  # nominal (width, height) of a rendered scene
_IN_SCENE_PROB = 0.9
_OBJECTS_PER_IMAGE = (3, 8)
_EMPTY_PROB = 0.05
_CROWD_PROB_IN_STREET = 0.18  # street is one of six scenes, so about 3% of all images
_SIZE_JITTER = 0.15  # image sides vary by up to this fraction around the requested size
_MIN_VISIBLE_FRACTION = 0.4
_MIN_PIXELS = 24
_PLACEMENT_ATTEMPTS = 12
_JPEG_QUALITY = 90
_COUNT_DISPERSION = 1.5  # negative-binomial shape: many images with a few objects, a few with dozens
_LICENSE = {
    "id": 1,
    "name": "CC0 1.0 (synthetic data)",
    "url": "https://creativecommons.org/publicdomain/zero/1.0/",
}


def _ring(n: int, cx: float = 0.0, cy: float = 0.0, r: float = 1.0) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _rounded_rect(corner: float = 0.35, per_corner: int = 3) -> np.ndarray:
    c = 1.0 - corner
    arcs = [
        np.stack([cx + corner * np.cos(t), cy + corner * np.sin(t)], axis=1)
        for cx, cy, start in ((c, c, 0.0), (-c, c, 0.5 * np.pi), (-c, -c, np.pi), (c, -c, 1.5 * np.pi))
        for t in [start + np.linspace(0.0, 0.5 * np.pi, per_corner)]
    ]
    return np.concatenate(arcs)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    t = -0.5 * np.pi + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


# Unit-size templates (inside [-1, 1]^2), one array per polygon part.
_SHAPE_KINDS: dict[str, tuple[np.ndarray, ...]] = {
    "ellipse": (_ring(16),),
    "rectangle": (np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]),),
    "rounded_rect": (_rounded_rect(),),
    "triangle": (np.array([[0.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]),),
    "star": (_star(),),
    "twin": (_ring(10, -0.55, 0.0, 0.42), _ring(10, 0.55, 0.0, 0.42)),
}

# Per-category look, indexed by position in COCO_CATEGORIES. Golden-ratio style strides spread
# neighbouring categories apart in hue, saturation, brightness, aspect and size.
_CAT_IDS = np.array([c["id"] for c in COCO_CATEGORIES], dtype=np.int64)
_CAT_POS = {c["name"]: i for i, c in enumerate(COCO_CATEGORIES)}
_positions = np.arange(len(COCO_CATEGORIES))
_CAT_KIND = _positions % len(_SHAPE_KINDS)
_CAT_COLOUR = 255.0 * np.array(
    [
        colorsys.hsv_to_rgb(h, s, v)
        for h, s, v in zip(
            (_positions * 0.618034) % 1.0,
            0.55 + 0.4 * ((_positions * 0.377) % 1.0),
            0.55 + 0.4 * ((_positions * 0.719) % 1.0),
            strict=True,
        )
    ]
)
_CAT_ASPECT = 2.0 ** (((_positions * 0.4142) % 1.0) * 1.4 - 0.7)
_CAT_SIZE = 0.75 + 0.5 * ((_positions * 0.2718) % 1.0)

_SCENE_NAMES = tuple(SCENES)
_STREET = _SCENE_NAMES.index("street")
_PERSON = _CAT_POS["person"]
_SCENE_BACKGROUNDS = np.array([[s.top, s.bottom] for s in SCENES.values()], dtype=np.float64)
_SCENE_LEN = np.array([len(s.categories) for s in SCENES.values()])
_SCENE_TABLE = np.array(  # category positions per scene, padded; only the first _SCENE_LEN are drawn
    [
        [_CAT_POS[n] for n in s.categories] + [0] * (_SCENE_LEN.max() - len(s.categories))
        for s in SCENES.values()
    ]
)


@dataclass(frozen=True)
class SynthJob:
    """`mpcc synth`: procedural scenes whose objects follow learnable context rules, written as JPEG
    images + instances.json (polygons and RLE): the embedded default data."""

    out: Path = option(help="directory for images/ and instances.json")
    num_images: int = option(200, "scenes to draw", minimum=1)
    seed: int = option(0, "generator seed", minimum=0)
    traces: bool = option(
        False, "also write traces.jsonl: a reasoning trace per object, for `mpcc annotate import`"
    )


def generate_scenes(
    out_dir: str | Path,
    num_images: int = SynthJob.num_images,
    seed: int = SynthJob.seed,
    image_size: tuple[int, int] = IMAGE_SIZE,
    traces: bool = SynthJob.traces,
) -> Path:
    """Render ``num_images`` scenes to ``out_dir/images/*.jpg`` and write ``out_dir/instances.json``.

    ``image_size`` is the nominal (width, height); each image varies by up to 15% around it. Image ``i``
    depends only on ``(seed, i)``, so a smaller run is a prefix of a larger one, and the same arguments
    give byte-identical files. Existing files in ``out_dir`` are overwritten, never deleted.
    With ``traces``, also write ``out_dir/traces.jsonl``: a reasoning trace for every non-crowd object
    (see :func:`scene_trace`), in the layout ``mpcc annotate import`` reads; the images and annotations
    are the same either way. Returns the path of the annotation file.
    """
    _check_args(num_images, seed, image_size)
    out = Path(out_dir)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    trace_rows: list[dict[str, Any]] = []
    for image_id in range(1, num_images + 1):
        rng = np.random.default_rng((seed, image_id))
        widths, heights = _image_sizes(rng, 1, image_size)
        width, height = int(widths[0]), int(heights[0])
        pixels, image_annotations, scene = _render_scene(rng, width, height)
        images.append(_image_record(image_id, width, height))
        image_path = image_dir / images[-1]["file_name"]
        Image.fromarray(pixels).save(image_path, format="JPEG", quality=_JPEG_QUALITY)
        first = len(annotations)
        for ann in image_annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
        if traces:
            trace_rows += _trace_rows(images[-1], annotations[first:], scene)
    dataset = _dataset(images, annotations, f"mpcc synthetic scenes (seed={seed})")
    path = write_annotations(dataset, out / "instances.json")
    if traces:
        lines = "".join(json.dumps(row, sort_keys=True) + "\n" for row in trace_rows)
        (out / TRACES_FILE).write_text(lines, encoding="utf-8")
    logger.info("wrote %d images with %d annotations to %s", len(images), len(annotations), out)
    return path


def scene_type(image_id: int, seed: int = SynthJob.seed, image_size: tuple[int, int] = IMAGE_SIZE) -> str:
    """The scene type `generate_scenes(..., seed, image_size)` drew for image `image_id` (its first draws,
    replayed): what a reader of the image should recognise, for measuring whether a model does."""
    rng = np.random.default_rng((seed, image_id))
    _image_sizes(rng, 1, image_size)
    return _SCENE_NAMES[int(rng.integers(len(SCENES)))]


def generate_annotations(
    num_images: int,
    seed: int = 0,
    image_size: tuple[int, int] = (640, 480),
    mean_instances: float = 7.3,
    empty_fraction: float = 0.01,
) -> dict[str, Any]:
    """Build a COCO instances dict without images, cheap enough for COCO-train sizes (118k images).

    It follows the same scene model as :func:`generate_scenes` but skips rendering: every object is an
    unoccluded polygon (``iscrowd=0``), ``area`` is the shoelace area of its polygon parts rather than a
    pixel count (the two agree up to boundary pixels), and ``bbox`` is the tight box around the vertices,
    as in COCO's own polygon annotations. The defaults mirror COCO train 2017: 640x480-ish images, about
    7.3 instances per image with a long tail, and about 1% of images without annotations.
    """
    _check_args(num_images, seed, image_size)
    if not 0.0 <= empty_fraction < 1.0 or mean_instances < 1.0 - empty_fraction:
        raise ConfigError("empty_fraction must be in [0, 1) and mean_instances >= 1 - empty_fraction")
    with _gc_paused():
        return _annotations_only(num_images, seed, image_size, mean_instances, empty_fraction)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of acyclic lists and dicts.

    Each collection rescans every container allocated so far, which makes building COCO-train-sized
    annotations about 2.5x slower; nothing built here can form a cycle, so there is nothing to collect.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _annotations_only(
    num_images: int, seed: int, image_size: tuple[int, int], mean_instances: float, empty_fraction: float
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    widths, heights = _image_sizes(rng, num_images, image_size)
    scenes = rng.integers(len(SCENES), size=num_images)
    per_image = _instance_counts(rng, num_images, mean_instances, empty_fraction)
    image_of = np.repeat(np.arange(num_images), per_image)
    cats = _choose_categories(rng, scenes[image_of])
    radius = _object_radii(rng, cats, np.minimum(widths, heights)[image_of])
    hi = np.stack([widths, heights], axis=1)[image_of] - 1.0
    segmentation: list[list[list[float]]] = [[] for _ in range(cats.size)]
    area = np.zeros(cats.size)
    bbox = np.zeros((cats.size, 4))
    for sel, parts in _place_shapes(rng, cats, radius, np.ones_like(hi), hi):
        area[sel] = sum(_shoelace_area(p) for p in parts)
        low = np.min([p.min(axis=1) for p in parts], axis=0)
        high = np.max([p.max(axis=1) for p in parts], axis=0)
        bbox[sel] = np.concatenate([low, high - low], axis=1)
        flat = [p.reshape(sel.size, -1).tolist() for p in parts]
        for row, index in enumerate(sel.tolist()):
            segmentation[index] = [part[row] for part in flat]
    annotations = [
        {
            "id": ann_id,
            "image_id": image_id,
            "category_id": category_id,
            "segmentation": seg,
            "area": a,
            "bbox": box,
            "iscrowd": 0,
        }
        for ann_id, image_id, category_id, seg, a, box in zip(
            range(1, cats.size + 1),
            (image_of + 1).tolist(),
            _CAT_IDS[cats].tolist(),
            segmentation,
            np.round(area, 2).tolist(),
            np.round(bbox, 2).tolist(),
            strict=True,
        )
    ]
    sizes = zip(widths.tolist(), heights.tolist(), strict=True)
    images = [_image_record(i, w, h) for i, (w, h) in enumerate(sizes, start=1)]
    logger.info("generated %d images with %d annotations (no pixels)", num_images, len(annotations))
    return _dataset(images, annotations, f"mpcc synthetic annotations (seed={seed})")


def write_annotations(dataset: Mapping[str, Any], path: str | Path) -> Path:
    """Write a COCO dict as compact JSON with sorted keys, so equal dicts give byte-identical files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # json.dumps uses the C encoder; json.dump would fall back to the much slower pure-Python one.
    path.write_text(json.dumps(dataset, sort_keys=True, separators=(",", ":")), encoding="utf-8")
    return path


def _check_args(num_images: int, seed: int, image_size: tuple[int, int]) -> None:
    if num_images < 0 or seed < 0:
        raise ConfigError(f"num_images and seed must be >= 0, got {num_images} and {seed}")
    if min(image_size) < 64:
        raise ConfigError(f"image_size must be at least 64x64, got {image_size}")


def _image_sizes(
    rng: np.random.Generator, n: int, image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    scale = rng.uniform(1.0 - _SIZE_JITTER, 1.0 + _SIZE_JITTER, size=(n, 2))
    sizes = np.rint(np.asarray(image_size, dtype=np.float64) * scale).astype(np.int64)
    return sizes[:, 0], sizes[:, 1]


def _instance_counts(rng: np.random.Generator, n: int, mean: float, empty_fraction: float) -> np.ndarray:
    """Objects per image: 0 for empty images, else 1 + negative binomial, with overall mean ``mean``."""
    extra = mean / (1.0 - empty_fraction) - 1.0  # mean of the negative binomial part
    p = _COUNT_DISPERSION / (_COUNT_DISPERSION + extra)
    counts = 1 + rng.negative_binomial(_COUNT_DISPERSION, p, size=n)
    return np.where(rng.random(n) < empty_fraction, 0, counts)


def _choose_categories(rng: np.random.Generator, scenes: np.ndarray) -> np.ndarray:
    """Category positions for objects in the given scenes: mostly from the scene's set, else any."""
    pick = (rng.random(scenes.size) * _SCENE_LEN[scenes]).astype(np.int64)
    anything = rng.integers(len(COCO_CATEGORIES), size=scenes.size)
    return np.where(rng.random(scenes.size) < _IN_SCENE_PROB, _SCENE_TABLE[scenes, pick], anything)


def _object_radii(rng: np.random.Generator, cats: np.ndarray, min_side: np.ndarray) -> np.ndarray:
    return rng.uniform(0.07, 0.2, size=cats.size) * _CAT_SIZE[cats] * min_side


def _place_shapes(
    rng: np.random.Generator, cats: np.ndarray, radius: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Random poses of each object's shape, grouped by shape kind so each template moves in one numpy op.

    Returns ``(object indices, parts)`` for each kind present; a part is an ``(m, k, 2)`` array of vertex
    coordinates, rounded to 2 decimals as stored in the JSON, lying inside the object's box ``[lo, hi]``
    (shapes too big for their box are shrunk to fit).
    """
    rx = radius * np.sqrt(_CAT_ASPECT[cats])
    ry = radius / np.sqrt(_CAT_ASPECT[cats])
    angle = rng.uniform(-0.35, 0.35, size=cats.size)
    spot = rng.random((cats.size, 2))  # where each shape sits within the room its box leaves
    kinds = _CAT_KIND[cats]
    groups = []
    for kind, template in enumerate(_SHAPE_KINDS.values()):
        sel = np.flatnonzero(kinds == kind)
        if sel.size == 0:
            continue
        cos, sin = np.cos(angle[sel])[:, None], np.sin(angle[sel])[:, None]
        parts = []
        for part in template:
            x, y = part[None, :, 0] * rx[sel, None], part[None, :, 1] * ry[sel, None]
            parts.append(np.stack([x * cos - y * sin, x * sin + y * cos], axis=-1))
        low = np.min([p.min(axis=1) for p in parts], axis=0)
        high = np.max([p.max(axis=1) for p in parts], axis=0)
        shrink = np.minimum(1.0, ((hi[sel] - lo[sel]) / (high - low)).min(axis=1))[:, None]
        low, high = low * shrink, high * shrink
        centre = lo[sel] - low + spot[sel] * ((hi[sel] - high) - (lo[sel] - low))
        groups.append((sel, [np.round(p * shrink[:, :, None] + centre[:, None, :], 2) for p in parts]))
    return groups


def _shoelace_area(vertices: np.ndarray) -> np.ndarray:
    """Areas of ``(m, k, 2)`` simple polygons by the shoelace formula (half the summed cross products)."""
    x, y = vertices[..., 0], vertices[..., 1]
    return 0.5 * np.abs(np.sum(x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y, axis=1))


def _render_scene(
    rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, list[dict[str, Any]], str]:
    """Draw one scene; returns the RGB pixels, its annotations (without ids) and the scene type.

    Objects are rasterised with pycocotools from the very polygons that get stored, into a label map in
    which later objects overwrite earlier ones; pixels and visible masks both come from that map, so
    they agree exactly.
    """
    scene = int(rng.integers(len(SCENES)))
    empty = rng.random() < _EMPTY_PROB
    crowd = not empty and scene == _STREET and rng.random() < _CROWD_PROB_IN_STREET
    specs = [(_PERSON, True)] if crowd else []
    if not empty:
        count = int(rng.integers(_OBJECTS_PER_IMAGE[0], _OBJECTS_PER_IMAGE[1] + 1))
        specs += [(int(c), False) for c in _choose_categories(rng, np.full(count, scene))]

    label = np.zeros((height, width), dtype=np.int32)
    full_areas = [0]  # index 0 is the background
    placed: list[tuple[int, bool, list[list[float]]]] = []
    for cat, is_crowd in specs:
        for _ in range(_PLACEMENT_ATTEMPTS):
            if is_crowd:
                polygons = _crowd_polygons(rng, width, height)
            else:
                polygons = _object_polygons(rng, cat, width, height)
            full = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))) > 0
            candidate = label.copy()
            candidate[full] = len(full_areas)
            visible = np.bincount(candidate.ravel(), minlength=len(full_areas) + 1)
            kept = visible[1:-1] >= _MIN_VISIBLE_FRACTION * np.array(full_areas[1:])
            if visible[-1] >= _MIN_PIXELS and kept.all():
                label = candidate
                full_areas.append(int(visible[-1]))
                placed.append((cat, is_crowd, polygons))
                break

    visible = np.bincount(label.ravel(), minlength=len(full_areas))
    annotations = []
    for index, (cat, is_crowd, polygons) in enumerate(placed, start=1):
        mask = np.asfortranarray((label == index).astype(np.uint8))
        rle = mask_utils.encode(mask)
        if is_crowd:
            segmentation: Any = _uncompressed_rle(mask)
        elif visible[index] == full_areas[index]:
            segmentation = polygons
        else:
            segmentation = {"size": [height, width], "counts": rle["counts"].decode("utf-8")}
        annotations.append(
            {
                "category_id": int(_CAT_IDS[cat]),
                "segmentation": segmentation,
                "area": float(mask_utils.area(rle)),
                "bbox": mask_utils.toBbox(rle).tolist(),
                "iscrowd": int(is_crowd),
            }
        )

    background = _SCENE_BACKGROUNDS[scene] + rng.integers(-12, 13, size=(2, 3))
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    shade = rng.uniform(0.93, 1.06, size=(len(placed), 1))
    colours = _CAT_COLOUR[[cat for cat, _, _ in placed]].reshape(-1, 3) * shade
    palette = np.concatenate([np.zeros((1, 3)), colours])  # row 0 (background) is never used
    pixels = np.where(label[..., None] > 0, palette[label], background[0] * (1.0 - t) + background[1] * t)
    pixels = pixels + rng.normal(0.0, 3.0, size=pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), annotations, _SCENE_NAMES[scene]


# ------------------------------------------------------------------------------------ reasoning traces

TRACES_FILE = "traces.jsonl"
TRACE_VERSION = "synthetic-scenes-1"  # bump when the wording of scene_trace changes
SCENE_WORDS = {  # how traces name each scene type
    "kitchen": "a kitchen",
    "street": "a street",
    "living_room": "a living room",
    "beach_park": "a beach or a park",
    "farm_wild": "open country",
    "office": "an office",
}
OUTLINE_WORDS = {  # how traces name each outline kind; plain words for tiny vocabularies
    "ellipse": "round",
    "rectangle": "boxy",
    "rounded_rect": "rounded",
    "triangle": "pointed",
    "star": "star",
    "twin": "twin",
}


def outline_word(category: str) -> str:
    """How traces name a category's outline (its shape kind, as the default segmentation mask shows it)."""
    return OUTLINE_WORDS[list(_SHAPE_KINDS)[_CAT_KIND[_CAT_POS[category]]]]


def _listing(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def scene_trace(scene: str, target: str, visible: list[str], area_frac: float) -> str:
    """A short reasoning trace for a hidden object, from what the generator knows is true: the scene
    type, the objects in view (those the scene's context rules expect first, at most two), the
    scene's rules and the category's look (its outline, as the default segmentation mask shows it, and
    its size). The first sentence never names the object; the second, last one concludes with it."""
    place = SCENE_WORDS[scene]
    expected = set(SCENES[scene].categories)
    others = sorted(set(visible) - {target}, key=lambda name: (name not in expected, name))[:2]
    around = f", with {_listing(others)} around the mask" if others else ""
    size = "small " if area_frac < 0.02 else "large " if area_frac >= 0.06 else ""
    mask = f"{size}{outline_word(target)} mask"
    if target in visible:
        link = f"The {mask} fits another {target} like the one in view."
    elif target in expected:
        link = f"In {place}, the {mask} fits {with_article(target)}."
    else:
        link = f"Nothing usual in {place} fits the {mask}, but {with_article(target)} does."
    return f"This is {place}{around}. {link}"


def _trace_rows(image: dict[str, Any], annotations: list[dict[str, Any]], scene: str) -> list[dict]:
    """One trace row per non-crowd object of an image, in the authors' `cot_data` layout plus ids."""
    names = {c["id"]: c["name"] for c in COCO_CATEGORIES}
    area = image["width"] * image["height"]
    rows = []
    for ann in annotations:
        if ann["iscrowd"]:
            continue
        target = names[ann["category_id"]]
        visible = [names[o["category_id"]] for o in annotations if o["id"] != ann["id"]]
        reasoning = scene_trace(scene, target, visible, ann["area"] / area)
        rows.append(
            {
                "image_id": image["id"],
                "file_name": image["file_name"],
                "ann_id": ann["id"],
                "bbox": ann["bbox"],
                "category_name": target,
                "cot_data": trace_completion(reasoning, target),
                "teacher": "mpcc.data.synthetic",
                "prompt_version": TRACE_VERSION,
            }
        )
    return rows


def _object_polygons(rng: np.random.Generator, cat: int, width: int, height: int) -> list[list[float]]:
    cats = np.array([cat])
    radius = _object_radii(rng, cats, np.array([min(width, height)]))
    box = np.array([[1.0, 1.0]]), np.array([[width - 1.0, height - 1.0]])
    [(_, parts)] = _place_shapes(rng, cats, radius, *box)
    return [p[0].ravel().tolist() for p in parts]


def _crowd_polygons(rng: np.random.Generator, width: int, height: int) -> list[list[float]]:
    """Small people packed in a horizontal band, as crowds appear in street photos."""
    count = int(rng.integers(8, 21))
    band = width * rng.uniform(0.3, 0.6)
    x0 = rng.uniform(1.0, width - 1.0 - band)
    y0 = height * rng.uniform(0.45, 0.6)
    lo = np.tile([x0, y0], (count, 1))
    hi = np.tile([x0 + band, min(y0 + 0.25 * height, height - 1.0)], (count, 1))
    radius = rng.uniform(0.02, 0.045, size=count) * min(width, height)
    [(_, parts)] = _place_shapes(rng, np.full(count, _PERSON), radius, lo, hi)
    return [person.ravel().tolist() for part in parts for person in part]


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE: run lengths over the column-major mask, starting with a run of zeros."""
    flat = mask.ravel(order="F").astype(bool)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [0, *runs] if flat[0] else runs}


def _image_record(image_id: int, width: int, height: int) -> dict[str, Any]:
    return {
        "id": image_id,
        "file_name": f"{image_id:012d}.jpg",
        "width": width,
        "height": height,
        "license": 1,
    }


def _dataset(
    images: list[dict[str, Any]], annotations: list[dict[str, Any]], description: str
) -> dict[str, Any]:
    info = {
        "description": description,
        "version": "1.0",
        "contributor": "mpcc.data.synthetic",
        "url": "",
        "date_created": "",
    }
    return {
        "info": info,
        "licenses": [_LICENSE],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in COCO_CATEGORIES],
    }
