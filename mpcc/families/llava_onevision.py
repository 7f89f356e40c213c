"""LLaVA-OneVision: a SigLIP tower on square tiles of the padded image (anyres), then the whole image.

For one image the processor makes the "base" image (the whole image resized to one tile, aspect ratio
squashed) and a canvas of `pinpoint` size (the best of `image_grid_pinpoints`) holding the image resized
to fit, centred between padding, cut into tiles. The model writes the base image's s x s tokens, then the
tiles' features as one grid over the canvas, with the padding rows (or columns) cut off in feature cells
(`unpad_image`), bilinearly shrunk when larger than `anyres_max_N` tiles allow, and a newline token after
each row. So the tokens are: one block over the whole image, then per row a block over that row's strip of
the unpadded canvas (in fractions of the image: it may reach a little into the padding, which lies outside
every region) and one newline token without a preimage. A shrunk grid's cells divide the same box.
The cells are the tower's patches only where a tile is a whole number of patches: otherwise grounding
is refused.
"""

from __future__ import annotations

import math

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
)
from transformers.image_processing_utils import select_best_resolution

from mpcc.families.base import TINY_SIGLIP, WHOLE_IMAGE, Family, partial_patch_refusal, tiny_text
from mpcc.families.image_only import ImageOnly
from mpcc.families.layouts import Stacked

TINY_TILE, TINY_PATCH = 56, 14  # 4 x 4 tokens per tile
TINY_PINPOINTS = [[56, 56], [56, 112], [112, 56], [112, 112], [56, 168], [168, 56]]
# the real checkpoints' anyres_max_9 never shrinks at most 3 tiles; 2 shrinks the tiny 2 x 2 canvas
TINY_ASPECT = "anyres_max_2"


class LlavaOnevisionImageOnlyProcessor(
    ImageOnly, LlavaOnevisionProcessor, video_processor_type="LlavaOnevisionVideoProcessor"
):
    """LLaVA-OneVision processor without a video processor (works without torchvision)."""

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        image_token=None,
        video_token=None,
        vision_aspect_ratio=None,
        **kwargs,
    ):
        """The stock class's settings by name: ProcessorMixin saves and loads only those `__init__` names
        (None: the stock default)."""
        named = {
            "num_image_tokens": num_image_tokens,
            "vision_feature_select_strategy": vision_feature_select_strategy,
            "image_token": image_token,
            "video_token": video_token,
            "vision_aspect_ratio": vision_aspect_ratio,
        }
        named = {k: v for k, v in named.items() if v is not None}
        super().__init__(image_processor, tokenizer, chat_template, **named, **kwargs)


class _OneImagePerRow(Stacked):
    """Per image, its tiles (padded to the batch's most), its size and its row's image count: an image
    alone in its row, as `get_image_features` tiles only those (`batch_num_images`); otherwise None."""

    def split(self, inputs: dict) -> list[tuple] | None:
        return super().split(inputs) if bool((inputs["batch_num_images"] == 1).all()) else None


def _unpadded(height: int, width: int, rows: int, cols: int) -> tuple[int, int, int, int]:
    """The feature cells (top, bottom, left, right) `unpad_image` keeps of a rows x cols canvas grid."""
    if width / height > cols / rows:
        pad = (rows - int(round(height * cols / width, 7))) // 2
        return pad, rows - pad, 0, cols
    pad = (cols - int(round(width * rows / height, 7))) // 2
    return 0, rows, pad, cols - pad


def _token_grids(processor, inputs) -> list:
    ip = processor.image_processor
    tile, side = ip.size["height"], math.isqrt(processor.num_image_tokens)
    height, width = (int(x) for x in inputs["image_sizes"][0])
    canvas_h, canvas_w = select_best_resolution((height, width), ip.image_grid_pinpoints)
    # the image inside the canvas, as the processor resizes and centres it (get_patch_output_size)
    if canvas_w / width < canvas_h / height:
        fit_w, fit_h = canvas_w, min(math.ceil(height * canvas_w / width), canvas_h)
    else:
        fit_w, fit_h = min(math.ceil(width * canvas_h / height), canvas_w), canvas_h
    paste_x, paste_y = (canvas_w - fit_w) // 2, (canvas_h - fit_h) // 2
    top, bottom, left, right = _unpadded(height, width, canvas_h // tile * side, canvas_w // tile * side)
    cell = tile / side  # canvas pixels per feature cell
    box_top, box_bottom = ((r * cell - paste_y) / fit_h for r in (top, bottom))
    box_left, box_right = ((c * cell - paste_x) / fit_w for c in (left, right))
    rows, cols = bottom - top, right - left
    limit = int(processor.vision_aspect_ratio.removeprefix("anyres_max_"))
    ratio = math.sqrt(rows * cols / (limit * side**2))
    if ratio > 1.1:  # the model's bilinear shrink
        rows, cols = int(rows // ratio), int(cols // ratio)
    step = (box_bottom - box_top) / rows
    strips = [(box_left, box_top + i * step, box_right, box_top + (i + 1) * step) for i in range(rows)]
    return [(side, side, WHOLE_IMAGE), *(g for strip in strips for g in ((1, cols, strip), (1, 1, None)))]


def _grounding_refusal(config, processor) -> str | None:
    vision = config.vision_config
    return partial_patch_refusal("LLaVA-OneVision", vision.image_size, vision.patch_size)


def _tiny_config(tokenizer, text_overrides: dict, vision_overrides: dict):
    """A 2-layer Qwen2 text model and a 2-layer SigLIP tower on 56-pixel tiles (the real patch size)."""
    ids = tokenizer.convert_tokens_to_ids
    text = tiny_text(tokenizer, model_type="qwen2")
    vision = TINY_SIGLIP | {
        "model_type": "siglip_vision_model",
        "image_size": TINY_TILE,
        "patch_size": TINY_PATCH,
    }
    return LlavaOnevisionConfig(
        text_config=text | text_overrides,
        vision_config=vision | vision_overrides,
        image_token_index=ids("<image>"),
        video_token_index=ids("<video>"),
        image_grid_pinpoints=TINY_PINPOINTS,
        vision_aspect_ratio=TINY_ASPECT,
    )


def _tiny_image_processor():
    size = {"height": TINY_TILE, "width": TINY_TILE}
    return LlavaOnevisionImageProcessorPil(size=size, image_grid_pinpoints=TINY_PINPOINTS)


FAMILY = Family(
    name="llava_onevision",
    model_types=(LlavaOnevisionConfig.model_type,),
    processor=LlavaOnevisionImageOnlyProcessor,
    image_placeholder="<image>",
    special_tokens=("<image>", "<video>"),
    tiny_config=_tiny_config,
    tiny_image_processor=_tiny_image_processor,
    token_grids=_token_grids,
    grounding_refusal=_grounding_refusal,
    tiny_processor_kwargs={
        "num_image_tokens": (TINY_TILE // TINY_PATCH) ** 2,
        "vision_feature_select_strategy": "full",
        "vision_aspect_ratio": TINY_ASPECT,
    },
    image_layout=_OneImagePerRow("pixel_values", "image_sizes", "batch_num_images", stacked_features=False),
    image_feature_memo=True,
    shared_prefill=True,
)
