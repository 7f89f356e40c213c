"""What mpcc needs to know about one model family, in one record (`Family`).

A family is a set of transformers `model_type`s that share a processor, a token layout for images and a
tiny-model recipe. Everything family-specific in mpcc reads it from here, so a new family is one module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mpcc.families.layouts import Patches, Stacked

# One block of image tokens: `rows` x `cols` tokens laid out row-major, each the cell of a regular grid over
# `box` = (left, top, right, bottom), a box of the original image in fractions of its width and height (it may
# reach past the image into a padded canvas); box None: tokens without a preimage (e.g. LLaVA-OneVision's
# row-end newlines), image tokens in no region.
Grid = tuple[int, int, tuple[float, float, float, float] | None]
WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)

# The tiny text model every family shares (hidden size 64, 2 layers); a family adds or overrides keys.
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}
# The tiny SigLIP tower of the families that use one (Idefics3, Gemma 3, LLaVA-OneVision).
TINY_SIGLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def tiny_text(tokenizer, **keys) -> dict:
    """TINY_TEXT sized to the tiny tokenizer, with its special tokens (Qwen's names, which the tiny
    tokenizer has: bos and pad `<|endoftext|>`, eos `<|im_end|>`); `keys` add or override."""
    ids = tokenizer.convert_tokens_to_ids
    special = {"bos_token_id": ids("<|endoftext|>"), "eos_token_id": ids("<|im_end|>")}
    return TINY_TEXT | {"vocab_size": len(tokenizer), **special, "pad_token_id": ids("<|endoftext|>")} | keys


def partial_patch_refusal(family: str, tile: int, patch: int) -> str | None:
    """Why a family's tiles of `tile` pixels cannot be mapped with `patch`-pixel patches, or None: the patch
    convolution's stride leaves a strip of each tile unseen, so the cells are not a regular grid of it."""
    if tile % patch:
        return (
            f"{family} tiles of {tile} pixels are not a whole number of {patch}-pixel patches: "
            "its image tokens are not mapped to image regions"
        )
    return None


@dataclass(frozen=True, kw_only=True)
class Family:
    """One model family behind mpcc's model interface."""

    name: str  # the `model_type` of its tiny model (`mpcc tiny-model --arch NAME`)
    model_types: tuple[str, ...]  # every config `model_type` it covers
    processor: type  # the processor class mpcc loads it with (works without torchvision)
    image_placeholder: str  # what its chat template writes for one image
    special_tokens: tuple[str, ...]  # the tokens its processor and model need beyond Qwen's base set
    # the tokenizer attributes its processor reads (e.g. Gemma 3's `boi_token`), each one of special_tokens
    named_tokens: dict = field(default_factory=dict)
    # (tokenizer, text overrides, vision overrides) -> the tiny model's config
    tiny_config: Callable = field(repr=False)
    # () -> the tiny model's image processor (PIL, small sizes)
    tiny_image_processor: Callable = field(repr=False)
    # (processor, one row's processor outputs with `image_sizes` [[height, width]] of its image, which
    # mpcc adds where the processor does not give it) -> the image's token blocks in token order (grounding)
    token_grids: Callable = field(repr=False)
    tiny_processor_kwargs: dict = field(default_factory=dict)  # e.g. image tokens per image
    # where each image lies in a batch's image inputs (`mpcc.families.layouts`), None: not known
    image_layout: Patches | Stacked | None = None
    # encode-once: `get_image_features` takes the layout's inputs and gives the layout's features
    image_feature_memo: bool = False
    # prefill-once: a prompt prefix's cache, copied to rows (and Qwen's `rope_deltas`), continues `generate`
    shared_prefill: bool = False
    # (model config, processor) -> why grounding cannot map their image tokens, or None when it can
    grounding_refusal: Callable = field(default=lambda config, processor: None, repr=False)

    def __post_init__(self):
        if (self.image_feature_memo or self.shared_prefill) and self.image_layout is None:
            raise ValueError(f"{self.name}: the encode-once memo and the shared prefill need an image_layout")
