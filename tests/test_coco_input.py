"""Damaged copies of tinycoco: a build keeps what is sound and reports the rest by reason, file and record."""

from __future__ import annotations

import copy
import json
import shutil
from collections import Counter

import numpy as np
import pytest
from datasets import load_from_disk
from PIL import Image
from pycocotools import mask as mask_utils

from mpcc.cli import main
from mpcc.data.build import SKIPS_FILE, BuildConfig, build
from mpcc.data.coco import CocoFormatError, load_coco


@pytest.fixture(scope="module")
def original(tinycoco):
    return json.loads((tinycoco / "instances.json").read_text())


def _write(tmp_path, data, name="instances.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(CocoFormatError, match=r"broken.json: malformed JSON at line 2"):
        load_coco(path)
    with pytest.raises(CocoFormatError, match="not found"):
        load_coco(tmp_path / "absent.json")
    path.write_text('{"images": []}')
    with pytest.raises(CocoFormatError, match="'annotations'"):
        load_coco(path)


def test_broken_records_are_skipped_by_reason(tmp_path, original, tinycoco):
    data = copy.deepcopy(original)
    anns = [a for a in data["annotations"] if not a["iscrowd"] and len(a["segmentation"]) == 1]
    anns[0]["segmentation"] = [[10.0, 10.0, 20.0, 20.0]]  # 2 points
    anns[1]["bbox"][2] = 0.0  # zero-area box
    anns[2]["bbox"] = [5000.0, 10.0, 20.0, 20.0]  # outside the image
    anns[3]["category_id"] = 999  # unknown category
    anns[4]["image_id"] = 123456789  # unknown image
    data["annotations"].append(dict(anns[5]))  # duplicate annotation id
    data["images"].append({**data["images"][-1]})  # duplicate image id
    dup_image = data["images"][-1]["id"]
    path = _write(tmp_path, data)
    source = load_coco(path, tinycoco / "images")
    counts = source.report.counts()
    assert counts["bad_polygon"] == 1 and counts["zero_area"] == 1 and counts["out_of_bounds"] == 1
    assert counts["unknown_category"] == 1
    # the duplicated image's annotations are orphaned too, so unknown_image counts them as well
    orphaned = sum(1 for a in original["annotations"] if a["image_id"] == dup_image)
    assert counts["unknown_image"] == 1 + orphaned
    assert counts["duplicate_id"] == 2 + 2  # both copies of the annotation and of the image
    for skip in source.report.skips:
        assert str(path) in str(skip) and skip.record
    bad = {anns[i]["id"] for i in range(6)}
    assert not bad & set(source.coco.anns)
    assert dup_image not in source.coco.imgs
    assert len(source.coco.anns) == len(original["annotations"]) - 6 - orphaned


def _damaged_images(tmp_path, tinycoco, original, with_targets):
    """A copy of tinycoco with a missing, a corrupt, a resized, a truncated, and grayscale/CMYK/palette
    images, all chosen among images that hold targets."""
    images = tmp_path / "images"
    shutil.copytree(tinycoco / "images", images)
    ims = [im for im in original["images"] if im["id"] in with_targets]
    (images / ims[0]["file_name"]).unlink()
    (images / ims[1]["file_name"]).write_bytes(b"not a jpeg at all")
    with Image.open(images / ims[2]["file_name"]) as im:
        im.resize((im.width // 2, im.height // 2)).save(images / ims[2]["file_name"])
    for im_rec, mode in zip(ims[3:6], ["L", "CMYK", "P"]):
        with Image.open(images / im_rec["file_name"]) as im:
            converted = im.convert(mode)
        converted.save(images / im_rec["file_name"], format="JPEG" if mode != "P" else "PNG")
    # a truncated file whose header still reads: caught when decoded for rendering
    raw = (images / ims[6]["file_name"]).read_bytes()
    (images / ims[6]["file_name"]).write_bytes(raw[: len(raw) // 3])
    return images, ims


def test_build_on_damaged_images_keeps_the_rest(tmp_path, tinycoco, original, tiny_builds):
    with_targets = set(load_from_disk(str(tiny_builds["train"]))["image_id"])
    images, ims = _damaged_images(tmp_path, tinycoco, original, with_targets)
    out = tmp_path / "train"
    result = build(tinycoco / "instances.json", images, out, BuildConfig("train"), num_proc=2)
    assert result.skipped == {
        "missing_image": 1,
        "size_mismatch": 1,
        "undecodable_image": 1,
        "unreadable_image": 1,
    }
    skips = [json.loads(line) for line in (out / SKIPS_FILE).read_text().splitlines()]
    assert [s["record"] for s in skips if s["reason"] == "missing_image"] == [
        f"image {ims[0]['id']} ({ims[0]['file_name']})"
    ]
    for skip in skips:  # every message names the annotation file, the image record and its file
        file_name = skip["record"].split("(")[1].rstrip(")")
        assert skip["file"].endswith("instances.json") and file_name in skip["detail"]
    ids = set(load_from_disk(str(out))["image_id"])
    broken = {ims[i]["id"] for i in (0, 1, 2, 6)}
    assert not broken & ids
    # grayscale, CMYK and palette images are converted to RGB and kept
    assert {ims[i]["id"] for i in (3, 4, 5)} <= ids
    assert ids == with_targets - broken


def test_rle_forms_decode_to_the_polygon_mask(original):
    """Compressed and uncompressed RLE of the same instance index and render like its polygon."""
    from mpcc.data.masking import decode, segmentation_to_rle

    ann = next(a for a in original["annotations"] if not a["iscrowd"] and len(a["segmentation"]) > 1)
    image = next(im for im in original["images"] if im["id"] == ann["image_id"])
    h, w = image["height"], image["width"]
    poly = decode(segmentation_to_rle(ann["segmentation"], h, w))
    compressed = segmentation_to_rle(ann["segmentation"], h, w)
    as_str = {"size": compressed["size"], "counts": compressed["counts"].decode()}
    flat = poly.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0]:
        counts = [0] + counts
    uncompressed = {"size": [h, w], "counts": counts}
    for segm in (as_str, uncompressed):
        assert (decode(segmentation_to_rle(segm, h, w)) == poly).all()
    assert mask_utils.area(compressed) == poly.sum()


def test_cli_reports_errors_without_traceback(tmp_path, capsys, tinycoco):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    code = main(
        [
            "prepare",
            "train",
            "--annotations",
            str(bad),
            "--images",
            str(tinycoco / "images"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "malformed JSON" in err
    assert not (tmp_path / "out").exists()


BAD_GEOMETRY = {  # one target's geometry -> the reason it is skipped under
    "nan_x": (lambda a, im: a["bbox"].__setitem__(0, float("nan")), "bad_bbox"),
    "inf_height": (lambda a, im: a["bbox"].__setitem__(3, float("inf")), "bad_bbox"),
    "negative_width": (lambda a, im: a["bbox"].__setitem__(2, -a["bbox"][2]), "bad_bbox"),
    "nan_area": (lambda a, im: a.__setitem__("area", float("nan")), "bad_annotation"),
    "nan_polygon": (lambda a, im: a["segmentation"][0].__setitem__(1, float("nan")), "bad_polygon"),
    "polygon_outside": (lambda a, im: a["segmentation"][0].__setitem__(0, 1e12), "out_of_bounds"),
    "garbage_rle": (
        lambda a, im: a.__setitem__("segmentation", {"size": [im["height"], im["width"]], "counts": "0"}),
        "bad_rle",
    ),
}


def test_bad_geometry_costs_its_target_not_the_image(tmp_path, tinycoco, original, tiny_builds):
    """NaN / inf / negative boxes, NaN areas, broken polygons and garbage compressed RLE in one target
    each: that target is skipped under its own reason, the other targets of its image are still built."""
    rows = load_from_disk(str(tiny_builds["train"])).select_columns(["image_id", "ann_id"]).to_list()
    per_image = Counter(r["image_id"] for r in rows)
    instances = Counter(a["image_id"] for a in original["annotations"])  # the rest keep 2 others as context
    shared = sorted(
        {
            r["image_id"]: r["ann_id"]
            for r in rows
            if per_image[r["image_id"]] > 1 and instances[r["image_id"]] > 3
        }.items()
    )
    data = copy.deepcopy(original)
    anns = {a["id"]: a for a in data["annotations"]}
    images = {im["id"]: im for im in data["images"]}
    broken = {}
    for (image_id, ann_id), (damage, reason) in zip(shared, BAD_GEOMETRY.values()):
        damage(anns[ann_id], images[image_id])
        broken[ann_id] = (image_id, reason)
    assert len(broken) == len(BAD_GEOMETRY)
    out = tmp_path / "train"
    result = build(_write(tmp_path, data), tinycoco / "images", out, BuildConfig("train"), num_proc=2)
    assert result.skipped == dict(sorted(Counter(reason for _, reason in broken.values()).items()))
    skips = [json.loads(line) for line in (out / SKIPS_FILE).read_text().splitlines()]
    assert sorted((s["record"], s["reason"]) for s in skips) == sorted(
        (f"annotation {ann_id} (image {image_id})", reason) for ann_id, (image_id, reason) in broken.items()
    )
    kept = load_from_disk(str(out)).select_columns(["image_id", "ann_id"]).to_list()
    assert not {r["ann_id"] for r in kept} & set(broken)
    assert {image_id for image_id, _ in broken.values()} <= {r["image_id"] for r in kept}
