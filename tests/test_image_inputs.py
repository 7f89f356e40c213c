"""Preprocess each image once (mpcc.generation.image_inputs): the processor's inputs are the same tensors
as without the memo, whatever was seen before or dropped, one image's patches never stand for
another's, and calls it does not serve go to the processor as they are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mpcc.errors import ConfigError
from mpcc.families import FAMILIES
from mpcc.families.layouts import PATCHES
from mpcc.generation.generators import prompt_inputs
from mpcc.generation.image_inputs import ImageInputMemo
from mpcc.models import random_vlm

PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is hidden?"}]}]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in ((300, 200), (160, 120))
    ]
    pixels = np.array(images[0])
    pixels[5, 7, 1] ^= 1  # one value apart: another image
    return [*images, Image.fromarray(pixels)]


def _rows(images, order) -> list[dict]:
    return [{"prompt": PROMPT, "image": images[i]} for i in order]


def _same(a, b) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("arch", [f.name for f in FAMILIES.values() if f.image_layout is PATCHES])
@pytest.mark.parametrize("kept", [64, 1])
def test_inputs_equal_the_processors_own(arch, kept):
    """Batches with repeated images, images of two sizes and two images one pixel value apart, over
    calls that meet images seen before (or dropped: `kept` 1), give the processor's own tensors."""
    _, processor = random_vlm(arch)
    _, own = random_vlm(arch)
    memo = ImageInputMemo(kept)
    memo.attach(processor)
    images = _images()
    for order in [(0, 0, 1, 0, 1, 0), (1, 2, 0, 2), (2,)]:
        _same(prompt_inputs(processor, _rows(images, order)), prompt_inputs(own, _rows(images, order)))
    if kept == 64:  # 3 distinct images, each processed once over the 11 rows
        assert memo.counts == {"images": 11, "processed": 3}
    counts = dict(memo.counts)
    other = processor.image_processor(images[:2])  # no torch tensors asked: the processor's own call
    assert memo.counts == counts
    assert np.array_equal(
        np.asarray(other["pixel_values"]), np.asarray(own.image_processor(images[:2])["pixel_values"])
    )
    with pytest.raises(ConfigError, match="already"):
        memo.attach(processor)
