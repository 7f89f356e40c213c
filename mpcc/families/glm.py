"""GLM-4.1V (`glm4v`) and GLM-4.6V (`glm46v`, the model of "Don't Blink"): Qwen-VL's vision path.

The processor resizes the whole image (no crop) to multiples of `patch_size x merge_size` and each image
token is one merged cell, row-major over `image_grid_thw`, as in Qwen-VL (`qwen.token_grid`); the model
keeps multimodal rope offsets in `rope_deltas` and encodes images with
`get_image_features(pixel_values, image_grid_thw)`, so the encode-once memo and the shared prefill apply.
"""

from __future__ import annotations

from transformers import (
    Glm4vConfig,
    Glm4vImageProcessorPil,
    Glm4vProcessor,
    Glm46VConfig,
    Glm46VImageProcessorPil,
    Glm46VProcessor,
)

from mpcc.families.base import TINY_TEXT, WHOLE_IMAGE, Family
from mpcc.families.image_only import ImageOnly
from mpcc.families.layouts import PATCHES
from mpcc.families.qwen import token_grid

TOKENS = (
    "<|image|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|video|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
)


class Glm4vImageOnlyProcessor(ImageOnly, Glm4vProcessor, video_processor_type="Glm4vVideoProcessor"):
    """GLM-4.1V processor without a video processor (works without torchvision)."""


class Glm46VImageOnlyProcessor(ImageOnly, Glm46VProcessor, video_processor_type="Glm46VVideoProcessor"):
    """GLM-4.6V processor without a video processor (works without torchvision)."""


def _token_grids(processor, inputs) -> list:
    return [(*token_grid(inputs["image_grid_thw"][0], processor.image_processor.merge_size), WHOLE_IMAGE)]


def _tiny_config(config_class):
    """Hidden size 64, 2 layers, GLM's half-rotary multimodal rope; a 2-block tower with the real patch,
    merge and temporal sizes."""

    def build(tokenizer, text_overrides: dict, vision_overrides: dict):
        ids = tokenizer.convert_tokens_to_ids
        text = TINY_TEXT | {
            "model_type": "glm4v_text",
            "vocab_size": len(tokenizer),
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        }
        text["rope_parameters"]["mrope_section"] = [1, 1, 2]  # head dim 16, half rotary: 4 frequencies
        vision = {"model_type": "glm4v_vision", "depth": 2, "hidden_size": 32, "intermediate_size": 64}
        vision |= {"num_heads": 2, "out_hidden_size": 64, "image_size": 112, "patch_size": 14}
        vision |= {"spatial_merge_size": 2, "temporal_patch_size": 2}
        return config_class(
            text_config=text | text_overrides,
            vision_config=vision | vision_overrides,
            image_token_id=ids("<|image|>"),
            video_token_id=ids("<|video|>"),
            image_start_token_id=ids("<|begin_of_image|>"),
            image_end_token_id=ids("<|end_of_image|>"),
            video_start_token_id=ids("<|begin_of_video|>"),
            video_end_token_id=ids("<|end_of_video|>"),
        )

    return build


def _tiny_image_processor(image_processor_class):
    def build():
        factor = 28  # patch 14 x merge 2: one token's cell
        return image_processor_class(size={"shortest_edge": 4 * factor**2, "longest_edge": 64 * factor**2})

    return build


def _family(name, config_class, processor, image_processor_class) -> Family:
    return Family(
        name=name,
        model_types=(config_class.model_type,),
        processor=processor,
        image_placeholder="<|begin_of_image|><|image|><|end_of_image|>",
        special_tokens=TOKENS,
        tiny_config=_tiny_config(config_class),
        tiny_image_processor=_tiny_image_processor(image_processor_class),
        token_grids=_token_grids,
        image_layout=PATCHES,
        image_feature_memo=True,
        shared_prefill=True,
    )


FAMILIES = (
    _family("glm4v", Glm4vConfig, Glm4vImageOnlyProcessor, Glm4vImageProcessorPil),
    _family("glm46v", Glm46VConfig, Glm46VImageOnlyProcessor, Glm46VImageProcessorPil),
)
