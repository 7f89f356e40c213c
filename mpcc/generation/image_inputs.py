"""Preprocess each image once: a memo of the image processor's outputs, keyed by image content.

An eval item's rows share one image (8 rows per item over the formats, two items per batch of 16), and
the diagnostics' passes send images again: the evidence pass every row's, CRM each ablated image to its
regeneration and then to its teacher-forced contrast. The processor resizes, normalises and cuts each
image into patches on its own, so an image seen among the last `max_images` takes its rows of
`pixel_values` and its `image_grid_thw` row from the memo, and only new images are processed (in one
call). The inputs are the same tensors as without the memo.

For the Qwen-VL layout (`pixel_values`: the patches of all images concatenated, one `image_grid_thw`
row per image: `mpcc.families.layouts.PATCHES`), Qwen-VL's and GLM's: other processors' outputs for an
image depend on its batch (Idefics3 tiles a row's images together, LLaVA-OneVision pads tiles to the
batch's most). An image is
keyed by its mode, size and a cryptographic digest of its pixels, and by the call's options; a call
for other than torch tensors of PIL images goes to the processor as it is.
"""

from __future__ import annotations

import functools
import hashlib

import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import make_flat_list_of_images

from mpcc.errors import ConfigError, ValidationError
from mpcc.families.layouts import image_slices

LAYOUT = {"pixel_values", "image_grid_thw"}


class ImageInputMemo:
    """Install on a processor with `attach`; `counts` says how many images were processed and reused."""

    def __init__(self, max_images: int):
        self.max_images = max_images
        self._entries: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.counts = {"images": 0, "processed": 0}

    def attach(self, processor) -> None:
        """Route `processor`'s image preprocessing through the memo."""
        image_processor = processor.image_processor
        original = image_processor.preprocess
        if getattr(original, "_mpcc_memo", None) is not None:
            raise ConfigError("this processor already has an image-input memo attached")

        @functools.wraps(original)
        def preprocess(images, *args, **kwargs):
            flat = make_flat_list_of_images(images)
            tensors = kwargs.get("return_tensors") == "pt"
            if args or not tensors or not all(isinstance(im, Image.Image) for im in flat):
                return original(images, *args, **kwargs)
            return self._inputs(original, flat, kwargs)

        preprocess._mpcc_memo = self
        image_processor.preprocess = preprocess  # the instance's: `__call__` looks it up there

    def _inputs(self, original, images: list[Image.Image], kwargs: dict) -> BatchFeature:
        options = repr(sorted(kwargs.items()))
        keys = [(options, im.mode, im.size, hashlib.blake2b(im.tobytes()).digest()) for im in images]
        new = {k: im for k, im in zip(keys, images) if k not in self._entries}
        self.counts["images"] += len(images)
        self.counts["processed"] += len(new)
        if new:
            out = original(list(new.values()), **kwargs)
            if set(out.keys()) != LAYOUT:
                raise ValidationError(
                    f"image-input memo: expected {sorted(LAYOUT)}, got {sorted(out.keys())}"
                )
            grids = out["image_grid_thw"]
            for key, rows, grid in zip(new, image_slices(grids), grids, strict=True):
                self._entries[key] = (out["pixel_values"][rows], grid)
        for key in keys:  # the images just used go last, the oldest are dropped first
            self._entries[key] = self._entries.pop(key)
        found = [self._entries[k] for k in keys]
        while len(self._entries) > self.max_images:
            del self._entries[next(iter(self._entries))]
        return BatchFeature(
            {
                "pixel_values": torch.cat([p for p, _ in found]),
                "image_grid_thw": torch.stack([g for _, g in found]),
            }
        )
