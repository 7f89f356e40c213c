"""Lazy builds render on access exactly what a stored build holds."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from mpcc.data.build import BuildConfig, build
from mpcc.data.masking import MaskSpec
from mpcc.data.render import load_dataset, render_targets


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


def _grey(values) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.uint8)[..., None], 3, axis=-1)


def _on_white(rgb, alpha) -> np.ndarray:
    rgb, alpha = np.asarray(rgb, dtype=np.int64), np.asarray(alpha, dtype=np.int64)[..., None]
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


SIXTEEN = np.array([[0, 255, 256, 511, 32768, 65280, 65535, 40000]])
RGBA = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128], [0, 0, 0, 77]] * 2], np.uint8)
PALETTE = [255, 0, 0, 0, 0, 255, 10, 20, 30]
INDICES = np.array([[0, 1, 2, 1, 0, 2, 2, 1]], np.uint8)
CMYK = np.array([[[10, 20, 30, 40], [0, 0, 0, 0], [255, 255, 255, 255], [0, 128, 255, 64]] * 2], np.uint8)


def _palette(transparent: bool) -> Image.Image:
    image = Image.fromarray(INDICES).convert("L").convert("P")
    image.frombytes(INDICES.tobytes())
    image.putpalette(PALETTE)
    if transparent:
        image.info["transparency"] = 1
    return image


CONVERSIONS = {  # name: (image in that mode, file format, the 8-bit RGB it must render as)
    "I;16": (Image.frombytes("I;16", (8, 1), SIXTEEN.astype("<u2").tobytes()), "PNG", _grey(SIXTEEN >> 8)),
    "I;16B": (Image.frombytes("I;16B", (8, 1), SIXTEEN.astype(">u2").tobytes()), "TIFF", _grey(SIXTEEN >> 8)),
    "I": (
        Image.fromarray(np.array([[0, 255, 256, -5, 70000, 65535, 40000, 511]], np.int32)),
        "TIFF",
        _grey([[0, 0, 1, 0, 255, 255, 156, 1]]),
    ),
    "F": (
        Image.fromarray(np.array([[0.4, 0.6, 1.5, -3, 300, 127.49, 254.6, 9]], np.float32)),
        "TIFF",
        _grey([[0, 1, 2, 0, 255, 127, 255, 9]]),
    ),
    "P": (_palette(False), "PNG", np.array(PALETTE, np.uint8).reshape(3, 3)[INDICES]),
    "P transparent": (
        _palette(True),
        "PNG",
        np.where((INDICES == 1)[..., None], 255, np.array(PALETTE, np.uint8).reshape(3, 3)[INDICES]),
    ),
    "CMYK": (
        Image.fromarray(CMYK, mode="CMYK"),
        "TIFF",
        np.rint((255.0 - CMYK[..., :3]) * (255.0 - CMYK[..., 3:]) / 255).astype(np.uint8),
    ),
    "RGBA": (Image.fromarray(RGBA), "PNG", _on_white(RGBA[..., :3], RGBA[..., 3])),
    "LA": (
        Image.fromarray(RGBA[..., [0, 3]], mode="LA"),
        "PNG",
        _on_white(_grey(RGBA[..., 0]), RGBA[..., 3]),
    ),
    "L": (Image.fromarray(INDICES * 100), "PNG", _grey(INDICES * 100)),
    "1": (Image.fromarray(INDICES == 1), "PNG", _grey((INDICES == 1) * 255)),
}


def test_every_image_mode_renders_as_8_bit_rgb(tmp_path):
    """16-bit samples keep their high byte (as Pillow reads 16-bit RGB files) instead of clipping to
    white, floats are on PIL's 0-255 scale, transparency is composited onto white; pixel by pixel."""
    target = np.zeros((1, 8), dtype=np.uint8)
    target[0, 0] = 1
    rle = mask_utils.encode(np.asfortranarray(target))
    mask = {"size": [1, 8], "counts": rle["counts"].decode()}
    for name, (image, file_format, expected) in CONVERSIONS.items():
        path = tmp_path / f"{name}.{file_format.lower()}"
        image.save(path, format=file_format)
        with Image.open(path) as saved:
            assert saved.mode == name.split()[0]  # the file holds the mode under test
        rendered = render_targets(path, [(1, mask, [0, 0, 1, 1])], MaskSpec(mode="segm"), seed=0)[1]
        pixels = np.asarray(rendered)
        assert rendered.mode == "RGB" and (pixels[0, 0] == 0).all(), name
        assert (pixels[0, 1:] == expected[0, 1:]).all(), (name, pixels[0], expected[0])
