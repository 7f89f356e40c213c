"""Lazy builds render on access exactly what a stored build holds."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.data.build import BuildConfig, build
from mpcc.data.masking import MaskSpec
from mpcc.data.render import load_dataset


@pytest.mark.parametrize("image_format", ["webp", "lazy"])
def test_formats_give_the_stored_png_pixels(tinycoco, tmp_path, image_format):
    ann, images = tinycoco / "instances.json", tinycoco / "images"
    spec = MaskSpec(mode="hull", fill="noise")  # a seeded fill: the per-target seed must match too
    build(ann, images, tmp_path / "png", BuildConfig("train", mask=spec), num_proc=1)
    build(
        ann,
        images,
        tmp_path / "other",
        BuildConfig("train", mask=spec, image_format=image_format),
        num_proc=1,
    )
    stored, other = load_dataset(tmp_path / "png"), load_dataset(tmp_path / "other")
    assert len(stored) == len(other)
    for i in (0, len(stored) // 2, len(stored) - 1):
        assert (np.asarray(stored[i]["image"]) == np.asarray(other[i]["image"].convert("RGB"))).all()


def test_lazy_light_columns_do_not_render(tinycoco, tmp_path):
    build(
        tinycoco / "instances.json",
        tinycoco / "images",
        tmp_path / "lazy",
        BuildConfig("train", image_format="lazy"),
        num_proc=1,
    )
    lazy = load_dataset(tmp_path / "lazy", images_dir=tmp_path / "nowhere")
    assert lazy.select_columns(["category", "difficulty"])[0]["category"]  # no image file needed
    with pytest.raises(FileNotFoundError):
        lazy[0]  # the image column needs the originals


def test_load_dataset_names_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_dataset(tmp_path)
