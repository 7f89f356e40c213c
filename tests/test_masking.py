"""Masking is pure and hides every target pixel, in every mode, fill and feather."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFilter

from mpcc.data.masking import FILLS, MASK_MODES, MaskSpec, _hull, dilate, region_mask, render_masked


@st.composite
def scenes(draw):
    h, w = draw(st.integers(8, 64)), draw(st.integers(8, 64))
    n = draw(st.integers(3, 8))
    points = [(draw(st.floats(0, w - 1)), draw(st.floats(0, h - 1))) for _ in range(n)]
    canvas = Image.new("1", (w, h))
    ImageDraw.Draw(canvas).polygon(points, fill=1)
    mask = np.asarray(canvas).copy()
    mask[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True  # never empty, maybe 2 parts
    ys, xs = np.nonzero(mask)
    bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    seed = draw(st.integers(0, 2**31))
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(image), mask, bbox, seed


@settings(max_examples=60, deadline=None)
@given(
    scene=scenes(),
    mode=st.sampled_from(MASK_MODES),
    fill=st.sampled_from(FILLS),
    feather=st.sampled_from([0.0, 1.5, 4.0]),
    dilate_px=st.integers(0, 6),
)
def test_every_target_pixel_shows_only_the_fill(scene, mode, fill, feather, dilate_px):
    image, mask, bbox, seed = scene
    spec = MaskSpec(mode=mode, fill=fill, dilate_px=dilate_px, feather=feather)
    out = np.asarray(render_masked(image, mask, bbox, spec, seed=seed))
    pixels = np.asarray(image)
    region = region_mask(mask, bbox, spec)
    assert (region >= mask).all()
    expected = {
        "black": np.zeros(3),
        "gray": np.full(3, 128),
        "mean": np.rint(pixels.reshape(-1, 3).mean(0)),
        "noise": np.random.default_rng(seed).integers(0, 256, pixels.shape, dtype=np.uint8)[region],
    }.get(fill)
    if fill == "blur":  # the radius follows the hidden region's box
        ys, xs = np.nonzero(region)
        radius = max(8.0, 0.25 * int(max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)))
        expected = np.asarray(image.filter(ImageFilter.GaussianBlur(radius)))[region]
    assert (out[region] == expected).all()
    # the same call gives the same bytes
    assert (np.asarray(render_masked(image, mask, bbox, spec, seed=seed)) == out).all()
    if feather == 0:
        assert (out[~region] == pixels[~region]).all()


def test_feather_fades_outward_only():
    image = Image.new("RGB", (40, 40), (200, 200, 200))
    mask = np.zeros((40, 40), bool)
    mask[15:25, 15:25] = True
    out = np.asarray(render_masked(image, mask, [15, 15, 10, 10], MaskSpec(mode="segm", feather=2.0)))
    assert (out[mask] == 0).all()
    assert 0 < out[14, 20, 0] < 200  # just outside: partly faded
    assert out[0, 0, 0] == 200  # far away: untouched


def test_dilation_matches_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((20, 30)) > 0.97
    for r in (0, 1, 3):
        brute = np.zeros_like(mask)
        for y, x in zip(*np.nonzero(mask)):
            brute[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = True
        assert (dilate(mask, r) == brute).all()


def test_hull_is_convex_and_covers_the_mask():
    mask = np.zeros((30, 30), bool)
    mask[5:10, 5:25] = True
    mask[5:25, 5:10] = True  # an L shape
    hull = _hull(mask)
    assert (hull >= mask).all()
    assert hull[12, 12] and hull[18, 11] and not hull[20, 20]  # the notch's inner triangle is filled
    assert (_hull(hull) == hull).all()
    box = np.zeros((30, 30), bool)
    box[3:17, 8:21] = True
    assert (_hull(box) == box).all()  # a convex shape is its own hull


def test_segm_dilated_grows_by_fraction_of_the_box():
    mask = np.zeros((100, 100), bool)
    mask[40:60, 30:70] = True
    spec = MaskSpec(mode="segm_dilated", dilate_px=0, dilate_frac=0.1)  # 10% of 40 px = 4 px
    region = region_mask(mask, [30, 40, 40, 20], spec)
    assert region[36, 50] and not region[35, 50]
    assert region[50, 26] and not region[50, 25]


@pytest.mark.parametrize("bad", [dict(mode="circle"), dict(fill="pink"), dict(feather=-1.0)])
def test_bad_spec_is_refused(bad):
    with pytest.raises(ValueError):
        MaskSpec(**bad)


@pytest.mark.parametrize("mode", MASK_MODES)
def test_target_outside_its_box_is_still_hidden(mode):
    """A box that disagrees with the mask (bad annotation) must not leave target pixels visible."""
    image = Image.new("RGB", (50, 40), (90, 160, 220))
    mask = np.zeros((40, 50), bool)
    mask[5:30, 10:40] = True
    out = np.asarray(render_masked(image, mask, [12.0, 8.0, 10.0, 10.0], MaskSpec(mode=mode)))
    assert (out[mask] == 0).all()


# ----------------------------------------------------------------------------- random_patch (ablation)


@settings(max_examples=60, deadline=None)
@given(scene=scenes(), fill=st.sampled_from(FILLS))
def test_random_patch_has_the_mask_area_hides_part_of_the_target_and_is_seeded(scene, fill):
    """Same area as the object's mask (exactly, up to the image's own size), always hiding a target pixel
    (the question about the hidden object keeps its answer), painted with the fill, the same bytes for
    the same seed."""
    image, mask, bbox, seed = scene
    spec = MaskSpec(mode="random_patch", fill=fill)
    region = region_mask(mask, bbox, spec, seed=seed)
    assert region.sum() == min(mask.sum(), mask.size)
    assert (region & mask).any()
    ys, xs = np.nonzero(region)
    assert (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) - region.sum() < xs.max() - xs.min() + 1
    out = np.asarray(render_masked(image, mask, bbox, spec, seed=seed))
    assert (out[~region] == np.asarray(image)[~region]).all()
    if fill == "black":
        assert (out[region] == 0).all()
    assert (np.asarray(render_masked(image, mask, bbox, spec, seed=seed)) == out).all()
    assert (region_mask(mask, bbox, spec, seed=seed) == region).all()


def test_random_patch_moves_with_the_seed_and_is_not_the_object():
    mask = np.zeros((80, 100), bool)
    mask[20:50, 30:60] = True
    mask[20:35, 30:45] = False  # an L shape, so no rectangle equals it
    spec = MaskSpec(mode="random_patch")
    regions = [region_mask(mask, [30, 20, 30, 30], spec, seed=s) for s in range(8)]
    assert len({r.tobytes() for r in regions}) > 1  # the seed places it
    for region in regions:
        assert region.sum() == mask.sum() and (region & mask).any()
        assert (mask & ~region).any()  # part of the object stays visible
    assert MaskSpec(mode="random_patch").mode in MaskSpec.__dataclass_fields__["mode"].metadata["choices"]


def test_random_patch_build_rows_keep_the_targets_answer(tmp_path):
    """A train build with random_patch masks: the same rows, questions and answers as the semantic
    build, only the pixels differ; and image diagnostics refuse such a build."""
    from mpcc.data.build import BuildConfig, build
    from mpcc.data.render import load_dataset
    from mpcc.data.synthetic import generate_scenes
    from mpcc.errors import ConfigError
    from mpcc.evaluation.grounding.conditions import Diagnostics

    scenes = tmp_path / "scenes"
    generate_scenes(scenes, num_images=6, seed=3)
    semantic, patch = tmp_path / "semantic", tmp_path / "patch"
    for out, mode in ((semantic, "segm_dilated"), (patch, "random_patch")):
        config = BuildConfig("train", mask=MaskSpec(mode=mode))
        build(scenes / "instances.json", scenes / "images", out, config, num_proc=1)
    a, b = load_dataset(semantic), load_dataset(patch)
    columns = ("ann_id", "solution", "prompt", "answer")
    assert [tuple(r[c] for c in columns) for r in a] == [tuple(r[c] for c in columns) for r in b]
    assert any(np.asarray(x["image"]).tobytes() != np.asarray(y["image"]).tobytes() for x, y in zip(a, b))
    with pytest.raises(ConfigError, match="random_patch"):
        Diagnostics(patch)
