"""Idefics3 (SmolVLM v1) and SmolVLM (SmolVLM2): a SigLIP tower on fixed-size square tiles, pixel-shuffled.

The processor scales the whole image (no crop) so both sides are multiples of the tile size, cuts it
into rows x cols tiles and adds the whole image resized to one tile (the "global" image); an image smaller
than a tile is only the global image. Each tile, and the global image, becomes `image_seq_len` = s x s
tokens, row-major over that tile: tile (r, c) covers [c / cols, (c + 1) / cols) x [r / rows, (r + 1) / rows)
of the original image. The prompt names each tile with a `<row_r_col_c>` token before its tokens, so the
tile layout is read back from the token ids. A tile that is not a whole number of patches (the real
checkpoints' 384-pixel tiles of 14-pixel patches) leaves a strip unseen: grounding is refused.

SmolVLM's processor is Idefics3's with a video path: its stock class wants `num2words` (a dependency) and a
torchvision video processor, which mpcc's loading class leaves out.
"""

from __future__ import annotations

import math

from transformers import (
    Idefics3Config,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    ProcessorMixin,
    SmolVLMConfig,
    SmolVLMImageProcessorPil,
    SmolVLMProcessor,
)

from mpcc.errors import ValidationError
from mpcc.families.base import TINY_SIGLIP, WHOLE_IMAGE, Family, partial_patch_refusal, tiny_text
from mpcc.families.image_only import ImageOnly
from mpcc.families.layouts import Stacked

MAX_TILES = 6  # the processor's tile-name tokens go up to <row_6_col_6>
TILE_TOKENS = tuple(f"<row_{r}_col_{c}>" for r in range(1, MAX_TILES + 1) for c in range(1, MAX_TILES + 1))
SPECIAL_TOKENS = ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *TILE_TOKENS)

# per row, its tiles (padded with all-zero tiles, which the model skips) and their pixel masks; the
# features one sequence per row
LAYOUT = Stacked("pixel_values", "pixel_attention_mask", stacked_features=False)
TINY_TILE, TINY_PATCH, TINY_SCALE = 112, 14, 2  # 8 x 8 patches per tile, 4 x 4 tokens after the shuffle


class SmolVLMImageOnlyProcessor(ImageOnly, SmolVLMProcessor, video_processor_type="SmolVLMVideoProcessor"):
    """SmolVLM processor without a video processor (works without torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_len=169, chat_template=None, **kwargs):
        """`image_seq_len` by name: ProcessorMixin saves and loads only the `__init__` names."""
        super().__init__(image_processor, tokenizer, chat_template, image_seq_len=image_seq_len, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        """The stock template application: SmolVLM's own adds its video processor's frame settings, and
        without a video processor there are no videos."""
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


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


def _grounding_refusal(name: str):
    def refusal(config, processor) -> str | None:
        tile = processor.image_processor.max_image_size["longest_edge"]
        return partial_patch_refusal(name, tile, config.vision_config.patch_size)

    return refusal


def _tiny_config(config_class):
    """A 2-layer Llama text model and a 2-layer SigLIP tower on 112-pixel tiles (the real patch size)."""

    def build(tokenizer, text_overrides: dict, vision_overrides: dict):
        ids = tokenizer.convert_tokens_to_ids
        text = tiny_text(tokenizer, model_type="llama")
        vision = TINY_SIGLIP | {"image_size": TINY_TILE, "patch_size": TINY_PATCH}
        return config_class(
            text_config=text | text_overrides,
            vision_config=vision | vision_overrides,
            image_token_id=ids("<image>"),
            scale_factor=TINY_SCALE,
            pad_token_id=ids("<|endoftext|>"),
        )

    return build


def _tiny_image_processor(image_processor_class):
    def build():
        """Images up to 2 x 2 tiles of 112 pixels (and the global image)."""
        return image_processor_class(
            size={"longest_edge": 2 * TINY_TILE}, max_image_size={"longest_edge": TINY_TILE}
        )

    return build


def _family(name, label, config_class, processor, image_processor_class, special_tokens) -> Family:
    return Family(
        name=name,
        model_types=(config_class.model_type,),
        processor=processor,
        image_placeholder="<image>",
        special_tokens=special_tokens,
        tiny_config=_tiny_config(config_class),
        tiny_image_processor=_tiny_image_processor(image_processor_class),
        token_grids=_token_grids,
        grounding_refusal=_grounding_refusal(label),
        tiny_processor_kwargs={"image_seq_len": (TINY_TILE // TINY_PATCH // TINY_SCALE) ** 2},
        image_layout=LAYOUT,
        image_feature_memo=True,
        shared_prefill=True,
    )


FAMILIES = (
    _family(
        "idefics3", "Idefics3", Idefics3Config, Idefics3Processor, Idefics3ImageProcessorPil, SPECIAL_TOKENS
    ),
    _family(
        "smolvlm",
        "SmolVLM",
        SmolVLMConfig,
        SmolVLMImageOnlyProcessor,
        SmolVLMImageProcessorPil,
        (*SPECIAL_TOKENS, "<video>"),
    ),
)
