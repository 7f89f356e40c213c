"""Idefics3 (SmolVLM's base architecture): a SigLIP tower on fixed-size square tiles, pixel-shuffled.

The processor scales the whole image (no crop) so both sides are multiples of the tile size, cuts it
into rows x cols tiles and adds the whole image resized to one tile (the "global" image); an image smaller
than a tile is only the global image. Each tile, and the global image, becomes `image_seq_len` = s x s
tokens, row-major over that tile: tile (r, c) covers [c / cols, (c + 1) / cols) x [r / rows, (r + 1) / rows)
of the original image. The prompt names each tile with a `<row_r_col_c>` token before its tokens, so the
tile layout is read back from the token ids.
"""

from __future__ import annotations

import math

from transformers import Idefics3Config, Idefics3ImageProcessorPil, Idefics3Processor

from mpcc.errors import ValidationError
from mpcc.families.base import TINY_SIGLIP, WHOLE_IMAGE, Family, tiny_text

MAX_TILES = 6  # the processor's tile-name tokens go up to <row_6_col_6>
TILE_TOKENS = tuple(f"<row_{r}_col_{c}>" for r in range(1, MAX_TILES + 1) for c in range(1, MAX_TILES + 1))
SPECIAL_TOKENS = ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *TILE_TOKENS)

TINY_TILE, TINY_PATCH, TINY_SCALE = 112, 14, 2  # 8 x 8 patches per tile, 4 x 4 tokens after the shuffle


def _token_grids(processor, inputs) -> list:
    ids = inputs["input_ids"][0].tolist()
    side = math.isqrt(processor.image_seq_len)
    if side * side != processor.image_seq_len:
        raise ValidationError(f"image_seq_len {processor.image_seq_len} is not a square number of tokens")
    tiles = [
        divmod(i, MAX_TILES)
        for i, name in enumerate(TILE_TOKENS)
        if processor.tokenizer.convert_tokens_to_ids(name) in ids
    ]
    rows = 1 + max((r for r, _ in tiles), default=-1)
    cols = 1 + max((c for _, c in tiles), default=-1)
    boxes = [(c / cols, r / rows, (c + 1) / cols, (r + 1) / rows) for r in range(rows) for c in range(cols)]
    return [(side, side, box) for box in [*boxes, WHOLE_IMAGE]]


def _tiny_config(tokenizer, text_overrides: dict, vision_overrides: dict):
    """A 2-layer Llama text model and a 2-layer SigLIP tower on 112-pixel tiles (the real patch size)."""
    ids = tokenizer.convert_tokens_to_ids
    text = tiny_text(tokenizer, model_type="llama")
    vision = TINY_SIGLIP | {"image_size": TINY_TILE, "patch_size": TINY_PATCH}
    return Idefics3Config(
        text_config=text | text_overrides,
        vision_config=vision | vision_overrides,
        image_token_id=ids("<image>"),
        scale_factor=TINY_SCALE,
        pad_token_id=ids("<|endoftext|>"),
    )


def _tiny_image_processor():
    """Images up to 2 x 2 tiles of 112 pixels (and the global image)."""
    return Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * TINY_TILE}, max_image_size={"longest_edge": TINY_TILE}
    )


FAMILY = Family(
    name="idefics3",
    model_types=(Idefics3Config.model_type,),
    processor=Idefics3Processor,
    image_placeholder="<image>",
    special_tokens=SPECIAL_TOKENS,
    tiny_config=_tiny_config,
    tiny_image_processor=_tiny_image_processor,
    token_grids=_token_grids,
    tiny_processor_kwargs={"image_seq_len": (TINY_TILE // TINY_PATCH // TINY_SCALE) ** 2},
)
