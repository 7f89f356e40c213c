"""Gemma 3: a SigLIP tower on one square image, average-pooled to `mm_tokens_per_image` tokens.

The processor resizes the whole image to the tower's square size (no crop, the aspect ratio squashed), and
the projector pools the patch grid to t x t tokens row-major: one block over the whole image. Pan-and-scan
(extra crops for large images, off by default) would add crop blocks mpcc does not map: grounding refuses it.
"""

from __future__ import annotations

import math

from transformers import Gemma3Config, Gemma3ImageProcessorPil, Gemma3Processor

from mpcc.families.base import TINY_SIGLIP, WHOLE_IMAGE, Family, tiny_text
from mpcc.families.layouts import Stacked

BOI, IMAGE, EOI = "<start_of_image>", "<image_soft_token>", "<end_of_image>"
TINY_IMAGE, TINY_PATCH, TINY_TOKENS = 128, 8, 64  # 16 x 16 patches pooled to 8 x 8 tokens


def _token_grids(processor, inputs) -> list:
    side = math.isqrt(processor.image_seq_length)
    return [(side, side, WHOLE_IMAGE)]


def _grounding_refusal(config, processor) -> str | None:
    if processor.image_processor.do_pan_and_scan:
        return "Gemma 3 pan-and-scan crops are not mapped to image regions (set do_pan_and_scan false)"
    return None


def _tiny_config(tokenizer, text_overrides: dict, vision_overrides: dict):
    """A 2-layer Gemma 3 text model (head dim 16) and a 2-layer SigLIP tower on 128-pixel images."""
    ids = tokenizer.convert_tokens_to_ids
    text = tiny_text(tokenizer, head_dim=16, query_pre_attn_scalar=16, sliding_window=512)
    vision = TINY_SIGLIP | {"image_size": TINY_IMAGE, "patch_size": TINY_PATCH}
    return Gemma3Config(
        text_config=text | text_overrides,
        vision_config=vision | vision_overrides,
        mm_tokens_per_image=TINY_TOKENS,
        boi_token_index=ids(BOI),
        eoi_token_index=ids(EOI),
        image_token_index=ids(IMAGE),
    )


def _tiny_image_processor():
    return Gemma3ImageProcessorPil(size={"height": TINY_IMAGE, "width": TINY_IMAGE}, do_pan_and_scan=False)


FAMILY = Family(
    name="gemma3",
    model_types=(Gemma3Config.model_type,),
    processor=Gemma3Processor,
    image_placeholder=BOI,
    special_tokens=(BOI, IMAGE, EOI),
    named_tokens={"boi_token": BOI, "image_token": IMAGE, "eoi_token": EOI},
    tiny_config=_tiny_config,
    tiny_image_processor=_tiny_image_processor,
    token_grids=_token_grids,
    grounding_refusal=_grounding_refusal,
    tiny_processor_kwargs={"image_seq_length": TINY_TOKENS},
    image_layout=Stacked("pixel_values", stacked_features=True),  # an image (or pan-and-scan crop) each
    image_feature_memo=True,
    shared_prefill=True,
)
