"""Tests for the procedural COCO generator: valid COCO, exact masks, determinism and learnable context."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools.coco import COCO

from mpcc.data.coco_categories import COCO_CATEGORIES
from mpcc.data.synthetic import (
    SCENE_WORDS,
    SCENES,
    TRACES_FILE,
    generate_annotations,
    generate_scenes,
    scene_type,
    write_annotations,
)

NUM_SCENE_IMAGES = 240
NUM_ANNOTATION_IMAGES = 5_000
NAME_TO_ID = {c["name"]: c["id"] for c in COCO_CATEGORIES}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, COCO]:
    path = generate_scenes(tmp_path_factory.mktemp("scenes"), num_images=NUM_SCENE_IMAGES, seed=0)
    return path, COCO(str(path))


@pytest.fixture(scope="module")
def annotations_only(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], COCO]:
    dataset = generate_annotations(NUM_ANNOTATION_IMAGES, seed=0)
    path = write_annotations(dataset, tmp_path_factory.mktemp("annotations") / "instances.json")
    return dataset, COCO(str(path))


def _category_sets(coco: COCO) -> list[set[int]]:
    return [{a["category_id"] for a in coco.imgToAnns[i]} for i in coco.getImgIds()]


def test_scene_dataset_is_complete_coco(scenes: tuple[Path, COCO]) -> None:
    path, coco = scenes
    data = coco.dataset
    assert set(data) == {"info", "licenses", "images", "annotations", "categories"}
    assert data["categories"] == [dict(c) for c in COCO_CATEGORIES]
    assert [img["id"] for img in data["images"]] == list(range(1, NUM_SCENE_IMAGES + 1))
    ann_ids = [a["id"] for a in data["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    for img in data["images"]:
        assert img["file_name"] == f"{img['id']:012d}.jpg"
        assert 320 <= img["width"] <= 448
        assert 240 <= img["height"] <= 336
        with Image.open(path.parent / "images" / img["file_name"]) as image:
            assert (image.format, image.mode) == ("JPEG", "RGB")
            assert image.size == (img["width"], img["height"])


def test_every_annotation_decodes_to_its_area_and_bbox(scenes: tuple[Path, COCO]) -> None:
    _, coco = scenes
    for ann in coco.dataset["annotations"]:
        img = coco.imgs[ann["image_id"]]
        assert ann["category_id"] in coco.cats
        seg = ann["segmentation"]
        if isinstance(seg, list):
            assert ann["iscrowd"] == 0
            assert seg
            assert all(len(part) >= 6 and len(part) % 2 == 0 for part in seg)
        else:
            assert seg["size"] == [img["height"], img["width"]]
            # Compressed RLE must be a str for JSON; uncompressed RLE is reserved for crowds.
            assert isinstance(seg["counts"], list if ann["iscrowd"] else str)
        mask = coco.annToMask(ann)
        assert mask.shape == (img["height"], img["width"])
        ys, xs = np.nonzero(mask)
        assert xs.size > 0
        assert ann["area"] == pytest.approx(xs.size, abs=0.5)
        expected_bbox = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["bbox"] == pytest.approx(expected_bbox, abs=1e-6)


def test_masks_are_the_visible_parts_only(scenes: tuple[Path, COCO]) -> None:
    _, coco = scenes
    occluded = 0
    for image_id in coco.getImgIds():
        anns = coco.imgToAnns[image_id]
        if anns:
            coverage = np.sum([coco.annToMask(a) for a in anns], axis=0)
            assert coverage.max() == 1, f"masks overlap in image {image_id}"
            occluded += sum(not isinstance(a["segmentation"], list) and not a["iscrowd"] for a in anns)
    assert occluded > 0


def test_crowds_and_empty_images_occur(scenes: tuple[Path, COCO]) -> None:
    _, coco = scenes
    crowds = [a for a in coco.dataset["annotations"] if a["iscrowd"]]
    assert crowds
    assert all(a["category_id"] == NAME_TO_ID["person"] for a in crowds)
    assert all(isinstance(a["segmentation"]["counts"][0], int) for a in crowds)
    empty = [i for i in coco.getImgIds() if not coco.imgToAnns[i]]
    assert 0.01 * NUM_SCENE_IMAGES <= len(empty) <= 0.12 * NUM_SCENE_IMAGES
    objects = [sum(not a["iscrowd"] for a in coco.imgToAnns[i]) for i in coco.getImgIds() if i not in empty]
    assert max(objects) <= 8
    assert np.mean(np.array(objects) >= 3) > 0.95


def test_pixels_follow_masks_and_category_colours(scenes: tuple[Path, COCO]) -> None:
    path, coco = scenes
    colours: dict[int, list[np.ndarray]] = defaultdict(list)
    for image_id in coco.getImgIds():
        pixels = np.asarray(
            Image.open(path.parent / "images" / coco.imgs[image_id]["file_name"]), dtype=float
        )
        for ann in coco.imgToAnns[image_id]:
            if ann["area"] >= 400:
                colours[ann["category_id"]].append(pixels[coco.annToMask(ann) > 0].mean(axis=0))
    spreads = [
        np.linalg.norm(c - np.median(c, axis=0), axis=1).max()
        for c in map(np.array, colours.values())
        if len(c) >= 3
    ]
    assert len(spreads) >= 20
    # Each category keeps one colour (up to shading and JPEG noise), so its masks cover its own pixels.
    assert max(spreads) < 40


def test_same_arguments_give_identical_files(tmp_path: Path, scenes: tuple[Path, COCO]) -> None:
    first = generate_scenes(tmp_path / "a", num_images=12, seed=0)
    second = generate_scenes(tmp_path / "b", num_images=12, seed=0)
    other_seed = generate_scenes(tmp_path / "c", num_images=12, seed=1)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other_seed.read_bytes()
    images = sorted(p.name for p in (first.parent / "images").iterdir())
    assert len(images) == 12
    for name in images:
        jpeg = (first.parent / "images" / name).read_bytes()
        assert jpeg == (second.parent / "images" / name).read_bytes()
        # Image i depends only on (seed, i), so a short run is a prefix of a long one.
        assert jpeg == (scenes[0].parent / "images" / name).read_bytes()


@pytest.mark.parametrize("dataset", ["scenes", "annotations_only"])
def test_context_rules_are_learnable(dataset: str, request: pytest.FixtureRequest) -> None:
    coco = request.getfixturevalue(dataset)[1]
    members = Counter(name for scene in SCENES.values() for name in scene.categories)
    exclusive = [[NAME_TO_ID[n] for n in s.categories if members[n] == 1] for s in SCENES.values()]
    sets = _category_sets(coco)

    def together(a: int, b: int) -> float:
        return sum(a in s and b in s for s in sets) / len(sets)

    same = [together(a, b) for group in exclusive for a, b in itertools.combinations(group, 2)]
    cross = [
        together(a, b)
        for g1, g2 in itertools.combinations(exclusive, 2)
        for a, b in itertools.product(g1, g2)
    ]
    assert np.mean(same) > 5 * np.mean(cross)


def test_annotations_only_matches_coco_train_statistics(
    annotations_only: tuple[dict[str, Any], COCO],
) -> None:
    dataset, coco = annotations_only
    per_image = np.array([len(coco.imgToAnns[i]) for i in coco.getImgIds()])
    assert len(per_image) == NUM_ANNOTATION_IMAGES
    assert per_image.mean() == pytest.approx(7.3, abs=0.25)
    assert 0.002 < np.mean(per_image == 0) < 0.03
    assert per_image.max() >= 30  # long tail, as in COCO
    assert [a["id"] for a in dataset["annotations"]] == list(range(1, len(dataset["annotations"]) + 1))
    assert dataset["categories"] == [dict(c) for c in COCO_CATEGORIES]


def test_annotations_only_polygons_are_consistent(annotations_only: tuple[dict[str, Any], COCO]) -> None:
    dataset, coco = annotations_only
    for ann in dataset["annotations"]:
        img = coco.imgs[ann["image_id"]]
        assert ann["category_id"] in coco.cats
        assert ann["iscrowd"] == 0
        assert all(len(part) >= 6 and len(part) % 2 == 0 for part in ann["segmentation"])
        points = np.concatenate([np.reshape(part, (-1, 2)) for part in ann["segmentation"]])
        assert points.min() >= 0
        assert np.all(points.max(axis=0) <= [img["width"], img["height"]])
        low, high = points.min(axis=0), points.max(axis=0)
        assert ann["bbox"] == pytest.approx([*low, *(high - low)], abs=0.011)
    for ann in dataset["annotations"][:: len(dataset["annotations"]) // 300]:
        # The shoelace area agrees with pycocotools' rasterised area up to boundary pixels.
        raster = coco.annToMask(ann).sum()
        assert ann["area"] == pytest.approx(raster, rel=0.05)


def test_annotations_only_is_deterministic() -> None:
    small = generate_annotations(300, seed=0)
    assert small == generate_annotations(300, seed=0)
    assert small != generate_annotations(300, seed=1)
    assert json.loads(json.dumps(small)) == small  # plain JSON types only


@settings(max_examples=25, deadline=None)
@given(
    num_images=st.integers(0, 15),
    seed=st.integers(0, 2**32),
    width=st.integers(64, 800),
    height=st.integers(64, 800),
)
def test_annotations_only_fit_any_image_size(num_images: int, seed: int, width: int, height: int) -> None:
    dataset = generate_annotations(num_images, seed=seed, image_size=(width, height))
    assert len(dataset["images"]) == num_images
    sizes = {img["id"]: (img["width"], img["height"]) for img in dataset["images"]}
    for ann in dataset["annotations"]:
        w, h = sizes[ann["image_id"]]
        x, y, bw, bh = ann["bbox"]
        assert min(ann["area"], bw, bh) > 0
        assert min(x, y) >= 0
        assert x + bw <= w
        assert y + bh <= h


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_images": -1},
        {"num_images": 1, "seed": -1},
        {"num_images": 1, "image_size": (32, 400)},
        {"num_images": 1, "empty_fraction": 1.0},
        {"num_images": 1, "mean_instances": 0.5},
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        generate_annotations(**kwargs)


def test_scene_type_replays_the_scene_each_image_was_drawn_with(tmp_path):
    """`scene_type` names the scene `generate_scenes` drew (the one its trace describes), so what a model
    says about a scene can be checked against it."""
    generate_scenes(tmp_path, num_images=12, seed=3, traces=True)
    rows = [json.loads(line) for line in (tmp_path / TRACES_FILE).read_text().splitlines()]
    assert len({r["image_id"] for r in rows}) >= 8
    for row in rows:
        assert f"This is {SCENE_WORDS[scene_type(row['image_id'], seed=3)]}" in row["cot_data"], row
