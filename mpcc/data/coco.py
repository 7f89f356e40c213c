"""Read a COCO instances file through pycocotools, keeping what is sound and reporting the rest.

Validation looks only at the JSON records (no mask decoding), so indexing a COCO-train-sized file
stays fast. Image files are checked separately (`check_images`) and only for images that matter.
Every problem becomes a `Skip` naming the file, the record and the reason; nothing here raises on a
bad record, only on a file that cannot be read as COCO at all (`CocoFormatError`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image
from pycocotools.coco import COCO

from mpcc.errors import InputError
from mpcc.inputs import read_json

logger = logging.getLogger(__name__)

BOX_TOLERANCE = 1.0  # pixels a bbox may stick out of the image (COCO rounds coordinates)


class CocoFormatError(InputError):
    """The annotation file as a whole is unusable (missing, malformed JSON, wrong top-level shape)."""


@dataclass(frozen=True)
class Skip:
    """One record left out of a build, and why."""

    file: str
    record: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}: {self.record}: {self.reason}: {self.detail}"


@dataclass
class SkipReport:
    """Skipped records counted by reason; written beside a build's output."""

    skips: list[Skip] = field(default_factory=list)

    def add(self, file: str | Path, record: str, reason: str, detail: str) -> None:
        skip = Skip(str(file), record, reason, detail)
        self.skips.append(skip)
        logger.debug("skipped %s", skip)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s.reason for s in self.skips).items()))

    def summary(self) -> str:
        if not self.skips:
            return "nothing skipped"
        parts = ", ".join(f"{reason}: {n}" for reason, n in self.counts().items())
        return f"skipped {len(self.skips)} record(s) ({parts})"

    def write_jsonl(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for skip in self.skips:
                f.write(json.dumps(asdict(skip), ensure_ascii=False) + "\n")


@dataclass
class CocoSource:
    """A validated COCO instances file: the pycocotools index plus where its images live."""

    coco: COCO
    annotations_path: Path
    images_dir: Path | None
    report: SkipReport

    def image_path(self, image_id: int) -> Path:
        if self.images_dir is None:
            raise ValueError("this source was loaded without an images directory")
        return self.images_dir / self.coco.imgs[image_id]["file_name"]

    @property
    def category_names(self) -> dict[int, str]:
        return {cid: c["name"] for cid, c in self.coco.cats.items()}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_finite(x) -> bool:
    return _is_number(x) and math.isfinite(x)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read_json(path: Path) -> dict:
    try:
        data = read_json(path)
    except FileNotFoundError as e:
        raise CocoFormatError(f"{path}: annotation file not found") from e
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise CocoFormatError(f"{path}: cannot read annotation file: {e}") from e
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoFormatError(f"{path}: missing or non-list top-level key {key!r}")
    return data


def _unique_by_id(records: list, kind: str, file: Path, report: SkipReport, check) -> dict[int, dict]:
    """Records keyed by id; every record of a duplicated id is dropped (which one is right is unknowable)."""
    by_id: dict[int, list[dict]] = defaultdict(list)
    for i, rec in enumerate(records):
        problem = "not an object" if not isinstance(rec, dict) else check(rec)
        if problem:
            rid = rec.get("id") if isinstance(rec, dict) else None
            report.add(file, f"{kind} #{i} (id {rid})", f"bad_{kind}", problem)
            continue
        by_id[rec["id"]].append(rec)
    kept = {}
    for rid, recs in by_id.items():
        if len(recs) > 1:
            for _ in recs:
                report.add(
                    file, f"{kind} {rid}", "duplicate_id", f"{len(recs)} {kind} records share id {rid}"
                )
        else:
            kept[rid] = recs[0]
    return kept


def _check_category(c: dict) -> str | None:
    if not _is_int(c.get("id")):
        return "id must be an integer"
    if not isinstance(c.get("name"), str) or not c["name"].strip():
        return "name must be a non-empty string"
    return None


def _check_image(im: dict) -> str | None:
    if not _is_int(im.get("id")):
        return "id must be an integer"
    if not isinstance(im.get("file_name"), str) or not im["file_name"]:
        return "file_name must be a non-empty string"
    for key in ("width", "height"):
        if not _is_int(im.get(key)) or im[key] <= 0:
            return f"{key} must be a positive integer, got {im.get(key)!r}"
    return None


def _check_annotation(ann: dict, images: dict, categories: dict) -> tuple[str, str] | None:
    """(reason, detail) when the annotation cannot be used, else None."""
    if not _is_int(ann.get("id")):
        return "bad_annotation", "id must be an integer"
    image = images.get(ann.get("image_id"))
    if image is None:
        return "unknown_image", f"image_id {ann.get('image_id')!r} is not a (valid) image"
    if ann.get("category_id") not in categories:
        return "unknown_category", f"category_id {ann.get('category_id')!r} is not a (valid) category"
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite(v) for v in bbox)):
        return "bad_bbox", f"bbox must be 4 finite numbers, got {bbox!r}"
    x, y, w, h = bbox
    if w < 0 or h < 0:
        return "bad_bbox", f"bbox {bbox} has a negative width or height"
    if not _is_finite(ann.get("area")):
        return "bad_annotation", f"area must be a finite number, got {ann.get('area')!r}"
    if w == 0 or h == 0 or ann["area"] <= 0:
        return "zero_area", f"bbox {bbox} / area {ann['area']!r} is empty"
    W, H = image["width"], image["height"]
    if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > W + BOX_TOLERANCE or y + h > H + BOX_TOLERANCE:
        return "out_of_bounds", f"bbox {bbox} leaves the {W}x{H} image"
    if ann.get("iscrowd", 0) not in (0, 1):
        return "bad_annotation", f"iscrowd must be 0 or 1, got {ann.get('iscrowd')!r}"
    return _check_segmentation(ann.get("segmentation"), H, W)


def _check_segmentation(segm, H: int, W: int) -> tuple[str, str] | None:
    """Geometry pycocotools can rasterize: it crashes or allocates without bound on non-finite or far-off
    polygon points and on malformed compressed RLE, so these cost their annotation, not the image."""
    if isinstance(segm, list):
        if not segm:
            return "bad_polygon", "empty polygon list"
        for part in segm:
            if not (isinstance(part, list) and all(_is_number(v) for v in part)):
                return "bad_polygon", "a polygon must be a flat list of numbers"
            if len(part) < 6 or len(part) % 2:
                return "bad_polygon", f"a polygon needs >= 3 (x, y) points, got {len(part)} numbers"
            if not all(map(math.isfinite, part)):
                return "bad_polygon", "polygon coordinates must be finite numbers"
            xs, ys = part[0::2], part[1::2]
            if (
                min(xs) < -BOX_TOLERANCE
                or min(ys) < -BOX_TOLERANCE
                or max(xs) > W + BOX_TOLERANCE
                or max(ys) > H + BOX_TOLERANCE
            ):
                return "out_of_bounds", f"a polygon point leaves the {W}x{H} image"
        return None
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if size != [H, W]:
            return "bad_rle", f"RLE size {size!r} differs from image size [{H}, {W}]"
        if isinstance(counts, str):
            counts = _compressed_counts(counts)
            if counts is None:
                return "bad_rle", "compressed RLE counts are not a valid COCO RLE string"
        if isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != H * W:
                return "bad_rle", "RLE counts must be non-negative ints summing to height*width"
            return None
        return "bad_rle", "RLE counts must be a list of ints or a compressed string"
    return "bad_segmentation", f"segmentation must be polygons or RLE, got {type(segm).__name__}"


def _compressed_counts(text: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string, decoded as pycocotools' rleFrString does (6-bit
    chars from '0', 5 data bits, a continuation and a sign bit; runs after the second are deltas), or
    None when the string is malformed."""
    counts: list[int] = []
    value = shift = 0
    for char in text:
        c = ord(char) - 48
        if not 0 <= c < 64:
            return None
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value -= 1 << shift
        counts.append(value + (counts[-2] if len(counts) > 2 else 0))
        value = shift = 0
    return counts if text and shift == 0 else None


def load_coco(annotations: str | Path, images_dir: str | Path | None = None) -> CocoSource:
    """Validate a COCO instances file and index what is sound with pycocotools."""
    path = Path(annotations)
    data = _read_json(path)
    report = SkipReport()
    categories = _unique_by_id(data["categories"], "category", path, report, _check_category)
    images = _unique_by_id(data["images"], "image", path, report, _check_image)
    annotations_by_id = _unique_by_id(
        data["annotations"],
        "annotation",
        path,
        report,
        lambda a: None if _is_int(a.get("id")) else "id must be an integer",
    )
    kept = []
    for ann in annotations_by_id.values():
        problem = _check_annotation(ann, images, categories)
        if problem:
            report.add(path, f"annotation {ann['id']} (image {ann.get('image_id')})", *problem)
        else:
            kept.append(ann)
    for cat in categories.values():
        cat.setdefault("supercategory", cat["name"])
    dataset = {
        **data,
        "categories": list(categories.values()),
        "images": list(images.values()),
        "annotations": kept,
    }
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        coco.createIndex()
    logger.info(
        "%s: %d images, %d annotations, %d categories; %s",
        path,
        len(coco.imgs),
        len(coco.anns),
        len(coco.cats),
        report.summary(),
    )
    return CocoSource(coco, path, Path(images_dir) if images_dir is not None else None, report)


def _image_problem(path: Path, width: int, height: int) -> tuple[str, str] | None:
    if not path.is_file():
        return "missing_image", f"{path} does not exist"
    try:
        with Image.open(path) as im:
            size = im.size
    except Exception as e:  # PIL raises several types for undecodable files
        return "unreadable_image", f"{path}: {e}"
    if size != (width, height):
        return "size_mismatch", f"{path} is {size[0]}x{size[1]}, annotations say {width}x{height}"
    return None


def check_images(source: CocoSource, image_ids: Iterable[int], threads: int = 8) -> set[int]:
    """Ids of the images whose file exists, opens and has the annotated size; the rest go to the report.

    Only the header is read (PIL opens lazily); a file that is truncated further on is caught when
    it is decoded for rendering.
    """
    ids = sorted(set(image_ids))
    imgs = source.coco.imgs
    with ThreadPoolExecutor(threads) as pool:
        problems = pool.map(
            lambda i: _image_problem(source.image_path(i), imgs[i]["width"], imgs[i]["height"]), ids
        )
        good = set()
        for image_id, problem in zip(ids, problems):
            if problem:
                source.report.add(
                    source.annotations_path, f"image {image_id} ({imgs[image_id]['file_name']})", *problem
                )
            else:
                good.add(image_id)
    return good
