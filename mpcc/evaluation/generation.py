"""Batched generation for evaluation: left-padded batches through HF `generate`, greedy by default.

The MPCC authors' script generates one item at a time; batching the same model over the same items
is the harness's main speed lever (see benchmarks/eval_throughput.py).
"""

from __future__ import annotations

import torch
from trl.data_utils import prepare_multimodal_messages

from mpcc.evaluation.config import Decoding


def conversation(row: dict) -> list[dict]:
    """The row's chat with its image(s) put in the placeholder(s)."""
    images = row.get("images") or [row["image"]]
    return prepare_multimodal_messages([dict(m) for m in row["prompt"]], images=images)


@torch.inference_mode()
def generate(model, processor, rows: list[dict], decoding: Decoding) -> list[str]:
    """Completions (special tokens stripped) for a batch of rows, in order."""
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        inputs = processor.apply_chat_template(
            [conversation(r) for r in rows],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": True},
        ).to(model.device)
    finally:
        tokenizer.padding_side = side
    sampling = {"temperature": decoding.temperature, "top_p": decoding.top_p} if decoding.do_sample else {}
    ids = model.generate(
        **inputs,
        max_new_tokens=decoding.max_new_tokens,
        do_sample=decoding.do_sample,
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    return processor.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
