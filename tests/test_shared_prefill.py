"""Prefill each distinct prompt once (mpcc.generation.shared_prefill): the same greedy tokens (and logits
within 1e-5) as plain `generate`, with each repeated prompt run through the language model once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mpcc.families import FAMILIES
from mpcc.generation.shared_prefill import generate_sharing_prefill
from mpcc.models import random_vlm


def _batch(processor, order, questions=("what is hidden here?", "name the object")):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)) for _ in questions]
    chats = [
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": images[i]}, {"type": "text", "text": questions[i]}],
            }
        ]
        for i in order
    ]
    processor.tokenizer.padding_side = "left"
    return processor.apply_chat_template(
        chats, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True},
    )  # fmt: skip


def _count_tokens(model) -> list[int]:
    """Tokens the language model processes, call after call."""
    seen = []
    model.model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"].shape[:2].numel()), with_kwargs=True
    )
    return seen


@pytest.mark.parametrize("arch", [f.name for f in FAMILIES.values() if f.shared_prefill])
@pytest.mark.parametrize("order", [(0, 0, 0, 1, 1, 1), (0, 1, 0, 1, 1, 0)])
def test_same_tokens_with_each_prompt_prefilled_once(arch, order):
    model, processor = random_vlm(arch)
    model.eval()
    inputs = _batch(processor, order)
    settings = {"max_new_tokens": 10, "do_sample": False, "pad_token_id": processor.tokenizer.pad_token_id}
    settings |= {"return_dict_in_generate": True, "output_logits": True}
    tokens = _count_tokens(model)
    plain = model.generate(**inputs, **settings)
    plain_prefill = tokens[0]
    tokens.clear()
    shared = generate_sharing_prefill(model, model.generate, **inputs, **settings)
    assert torch.equal(shared.sequences, plain.sequences)
    for step, logits in zip(shared.logits, plain.logits, strict=True):  # the prefill's positions: generate's
        torch.testing.assert_close(step, logits, rtol=0, atol=1e-5)
    rows, length = inputs["input_ids"].shape
    assert plain_prefill == rows * length
    assert tokens[0] == 2 * (length - 1) and tokens[1] == rows  # 2 prompts prefilled, then each row's last


def test_a_lora_model_shares_its_prefill_with_qwens_rope_offsets():
    """Under peft the model's rope offsets sit on the base model: copied to the rows as without LoRA."""
    from peft import LoraConfig, get_peft_model

    model, processor = random_vlm("qwen2_5_vl")
    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)  # adapters that act
    model = get_peft_model(model, lora).eval()
    inputs = _batch(processor, (0, 1, 0, 1, 1, 0))
    settings = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": processor.tokenizer.pad_token_id}
    settings |= {"return_dict_in_generate": True, "output_logits": True}
    plain = model.generate(**inputs, **settings)
    shared = generate_sharing_prefill(model, model.generate, **inputs, **settings)
    assert torch.equal(shared.sequences, plain.sequences)
    for step, logits in zip(shared.logits, plain.logits, strict=True):
        torch.testing.assert_close(step, logits, rtol=0, atol=1e-5)


def test_distinct_prompts_or_a_static_cache_are_plain_generate():
    model, processor = random_vlm("qwen2_5_vl")
    model.eval()
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": processor.tokenizer.pad_token_id}
    calls = []

    def generate(**kwargs):
        calls.append(kwargs)
        return model.generate(**kwargs)

    generate_sharing_prefill(model, generate, **_batch(processor, (0, 1)), **settings)
    generate_sharing_prefill(
        model, generate, **_batch(processor, (0, 0)), **settings, cache_implementation="static"
    )
    assert len(calls) == 2 and all("cache" not in c and "pixel_values" in c for c in calls)
