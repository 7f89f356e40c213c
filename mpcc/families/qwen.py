"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL (and Qwen3-VL-MoE checkpoints, which share Qwen3-VL's processor).

A Qwen-VL processor resizes the whole image (no crop) to a multiple of `patch_size x merge_size` pixels,
and each image token is one merged cell of that resized image, row-major over `image_grid_thw` = (t, h, w)
patches, i.e. (h / merge) x (w / merge) tokens over the whole image.
"""

from __future__ import annotations

from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen3VLConfig,
    Qwen3VLMoeConfig,
    Qwen3VLProcessor,
)

from mpcc.errors import ValidationError
from mpcc.families.base import WHOLE_IMAGE, Family, tiny_text
from mpcc.families.image_only import ImageOnly
from mpcc.families.layouts import PATCHES

PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


class Qwen2VLImageOnlyProcessor(ImageOnly, Qwen2VLProcessor, video_processor_type="Qwen2VLVideoProcessor"):
    """Qwen2-VL processor without a video processor (works without torchvision)."""


class Qwen2_5_VLImageOnlyProcessor(
    ImageOnly, Qwen2_5_VLProcessor, video_processor_type="Qwen2VLVideoProcessor"
):
    """Qwen2.5-VL processor without a video processor (works without torchvision)."""


class Qwen3VLImageOnlyProcessor(ImageOnly, Qwen3VLProcessor, video_processor_type="Qwen3VLVideoProcessor"):
    """Qwen3-VL processor without a video processor (works without torchvision)."""


def token_grid(image_grid_thw, merge_size: int) -> tuple[int, int]:
    """(rows, cols) of image tokens for one image's `image_grid_thw` row (t, h, w in patches)."""
    t, h, w = (int(x) for x in image_grid_thw)
    if t != 1 or h % merge_size or w % merge_size:
        raise ValidationError(
            f"image_grid_thw {(t, h, w)} is not one still image in {merge_size}x{merge_size} cells"
        )
    return h // merge_size, w // merge_size


def _token_grids(processor, inputs) -> list:
    return [(*token_grid(inputs["image_grid_thw"][0], processor.image_processor.merge_size), WHOLE_IMAGE)]


def _tiny_config(arch: str):
    """Hidden size 64, 2 layers; a 2-block vision tower with the real patch, merge and temporal sizes."""

    def build(tokenizer, text_overrides: dict, vision_overrides: dict):
        ids = tokenizer.convert_tokens_to_ids
        rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}
        text = tiny_text(tokenizer, rope_parameters=rope)
        vision = {"depth": 2, "num_heads": 2, "patch_size": 14, "spatial_merge_size": 2}
        vision |= {"temporal_patch_size": 2}
        if arch == "qwen2_vl":
            config_class = Qwen2VLConfig
            vision |= {"embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2}
        elif arch == "qwen2_5_vl":
            config_class = Qwen2_5_VLConfig
            vision |= {"hidden_size": 32, "intermediate_size": 64, "out_hidden_size": 64}
            vision |= {"window_size": 112, "fullatt_block_indexes": [1]}
        else:
            config_class = Qwen3VLConfig
            text |= {"head_dim": 16}
            text["rope_parameters"] |= {"mrope_section": [4, 2, 2], "mrope_interleaved": True}
            vision |= {"hidden_size": 32, "intermediate_size": 64, "out_hidden_size": 64, "patch_size": 16}
            vision |= {"num_position_embeddings": 256, "deepstack_visual_indexes": [1]}
        return config_class(
            text_config=text | text_overrides,
            vision_config=vision | vision_overrides,
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
        )

    return build


def _tiny_image_processor(arch: str):
    """The PIL image processor with the family's patch size and normalisation, and small default bounds."""

    def build():
        qwen3 = arch == "qwen3_vl"
        patch = 16 if qwen3 else 14
        factor = patch * 2  # one merged token covers factor x factor pixels
        norm = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3} if qwen3 else {}
        return Qwen2VLImageProcessorPil(
            patch_size=patch, merge_size=2, temporal_patch_size=2,
            min_pixels=4 * factor**2, max_pixels=64 * factor**2, **norm,
        )  # fmt: skip

    return build


def _family(name: str, processor: type, model_types: tuple[str, ...]) -> Family:
    return Family(
        name=name,
        model_types=model_types,
        processor=processor,
        image_placeholder=PLACEHOLDER,
        special_tokens=(),
        tiny_config=_tiny_config(name),
        tiny_image_processor=_tiny_image_processor(name),
        token_grids=_token_grids,
        image_layout=PATCHES,
        image_feature_memo=True,
        shared_prefill=True,
    )


FAMILIES = (
    _family("qwen2_vl", Qwen2VLImageOnlyProcessor, (Qwen2VLConfig.model_type,)),
    _family("qwen2_5_vl", Qwen2_5_VLImageOnlyProcessor, (Qwen2_5_VLConfig.model_type,)),
    _family("qwen3_vl", Qwen3VLImageOnlyProcessor, (Qwen3VLConfig.model_type, Qwen3VLMoeConfig.model_type)),
)
