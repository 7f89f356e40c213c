"""InternVL (the transformers port, `-hf` checkpoints): an InternViT tower on square tiles, pixel-shuffled.

The image processor (GOT-OCR2's) picks the tiling of `min_patches`..`max_patches` tiles whose aspect ratio
is closest to the image's (`get_optimal_tiled_canvas`), resizes the whole image (no crop, no padding) to
that canvas, cuts it into rows x cols tiles row-major and, when there is more than one tile, adds the whole
image resized to one tile (the thumbnail). Each tile becomes `image_seq_length` = s x s tokens, each a
2 x 2 block of patches after the pixel shuffle, row-major over its tile, so tile (r, c) covers
[c / cols, (c + 1) / cols) x [r / rows, (r + 1) / rows) of the image, as in Idefics3. The prompt does not
name the tiles: the tiling is recomputed from the image's size (`image_sizes`), and checked against the
number of image tokens.
"""

from __future__ import annotations

import math

from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from mpcc.errors import ValidationError
from mpcc.families.base import TINY_SIGLIP, WHOLE_IMAGE, Family, partial_patch_refusal, tiny_text
from mpcc.families.image_only import ImageOnly
from mpcc.families.layouts import Stacked

# The real checkpoints' tokens; `<IMG_CONTEXT>` is the image token and what the chat template writes.
START, CONTEXT, END, VIDEO = "<img>", "<IMG_CONTEXT>", "</img>", "<video>"
TINY_TILE, TINY_PATCH, TINY_MAX_TILES = 112, 14, 4  # 8 x 8 patches, 4 x 4 tokens per tile; up to 2 x 2 tiles


class InternVLImageOnlyProcessor(ImageOnly, InternVLProcessor, video_processor_type="InternVLVideoProcessor"):
    """InternVL processor without a video processor (works without torchvision)."""

    def __init__(
        self, image_processor=None, tokenizer=None, image_seq_length=256, chat_template=None, **kwargs
    ):
        """`image_seq_length` by name: ProcessorMixin saves and loads only the `__init__` names."""
        super().__init__(
            image_processor, tokenizer, chat_template, image_seq_length=image_seq_length, **kwargs
        )


def _token_grids(processor, inputs) -> list:
    side = math.isqrt(processor.image_seq_length)
    if side * side != processor.image_seq_length:
        raise ValidationError(f"image_seq_length {processor.image_seq_length} is not a square number")
    blocks = int((inputs["input_ids"][0] == processor.image_token_id).sum()) // processor.image_seq_length
    if blocks == 1:  # one tile: the whole image, no thumbnail
        return [(side, side, WHOLE_IMAGE)]
    ip = processor.image_processor
    height, width = (int(x) for x in inputs["image_sizes"][0])
    tile = (ip.size["height"], ip.size["width"])
    cols, rows = get_optimal_tiled_canvas((height, width), tile, ip.min_patches, ip.max_patches)
    if rows * cols + 1 != blocks:
        raise ValidationError(
            f"{blocks} InternVL image blocks, but a {height}x{width} image tiles into {rows}x{cols} "
            "and a thumbnail"
        )
    boxes = [(c / cols, r / rows, (c + 1) / cols, (r + 1) / rows) for r in range(rows) for c in range(cols)]
    return [(side, side, box) for box in [*boxes, WHOLE_IMAGE]]


def _grounding_refusal(config, processor) -> str | None:
    size, patch = processor.image_processor.size, config.vision_config.patch_size
    tiles = ((size["height"], patch[0]), (size["width"], patch[1]))
    return next(filter(None, (partial_patch_refusal("InternVL", t, p) for t, p in tiles)), None)


def _tiny_config(tokenizer, text_overrides: dict, vision_overrides: dict):
    """A 2-layer Qwen2 text model and a 2-layer InternViT tower on 112-pixel tiles (the real patch size)."""
    ids = tokenizer.convert_tokens_to_ids
    text = tiny_text(tokenizer, model_type="qwen2")
    vision = TINY_SIGLIP | {"image_size": TINY_TILE, "patch_size": TINY_PATCH}
    return InternVLConfig(
        text_config=text | text_overrides,
        vision_config=vision | vision_overrides,
        image_token_id=ids(CONTEXT),
        image_seq_length=(TINY_TILE // TINY_PATCH // 2) ** 2,
    )


def _tiny_image_processor():
    """Up to 2 x 2 tiles of 112 pixels (and the thumbnail), tiled by default as the stock processor does."""
    size = {"height": TINY_TILE, "width": TINY_TILE}
    tiles = {"crop_to_patches": True, "min_patches": 1, "max_patches": TINY_MAX_TILES}
    return GotOcr2ImageProcessorPil(size=size, **tiles)


FAMILY = Family(
    name="internvl",
    model_types=(InternVLConfig.model_type,),
    processor=InternVLImageOnlyProcessor,
    image_placeholder=CONTEXT,
    special_tokens=(START, CONTEXT, END, VIDEO),
    named_tokens={
        "start_image_token": START,
        "context_image_token": CONTEXT,
        "end_image_token": END,
        "video_token": VIDEO,
    },
    tiny_config=_tiny_config,
    tiny_image_processor=_tiny_image_processor,
    token_grids=_token_grids,
    grounding_refusal=_grounding_refusal,
    tiny_processor_kwargs={"image_seq_length": (TINY_TILE // TINY_PATCH // 2) ** 2},
    # every image's tiles concatenated and encoded each on its own: the memo keeps tiles, not images
    image_layout=Stacked("pixel_values", stacked_features=True),
    image_feature_memo=True,
    # no shared prefill: the inputs do not say which tiles are which row's (no per-image tile count)
)
