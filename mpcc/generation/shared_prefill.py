"""Prefill each distinct prompt once: a group's G rows share one prompt and image, so HF `generate`
would run the prompt (and the vision tower) G times before decoding.

`generate_sharing_prefill` finds the distinct rows of the batch (same token ids, attention mask and
image inputs, as the family's `image_layout` takes them apart), runs one forward over all but the last
prompt token of each, copies its KV cache to every row of that prompt (`Cache.reorder_cache` with the
row -> distinct-row index), and lets `generate` continue from there: the last prompt token, then
decoding, as usual. The prefill's positions are `generate`'s own: Qwen's multimodal rope offsets
(`rope_deltas`, kept on the model, copied to the rows as the cache is) or, for the other families, the
positions `generate` counts from the attention mask. Greedy completions are the same tokens as without
sharing.

It applies to a dynamic KV cache, one image per row and the families with `shared_prefill`; otherwise,
or when no prompt repeats, it is plain `generate`. A static cache (compiled decoding) is allocated
inside `generate` for the whole batch and is not shared: those runs prefill every row.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from mpcc.families import family
from mpcc.models import unwrap_peft

# per-token inputs besides the ids and mask: Qwen3-VL's and GLM's modality ids, Gemma 3's image spans
TOKEN_INPUTS = ("mm_token_type_ids", "token_type_ids")


def _distinct_rows(inputs: dict, layout) -> tuple[torch.Tensor, list] | None:
    """Per row, the index of the first row with the same ids, mask and image, and the rows' images; None
    when not applicable."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if any(inputs.get(k) is None for k in layout.keys):
        return None  # rows without an image
    images = layout.split({k: inputs[k] for k in layout.keys})
    if images is None or len(images) != len(ids):
        return None  # several images per row
    seen: dict[tuple, list] = {}
    index = []
    for row, image in enumerate(images):
        shapes = tuple(tuple(part.shape) for part in image)
        key = (ids[row].cpu().numpy().tobytes(), mask[row].cpu().numpy().tobytes(), shapes)
        first = next((r for other, r in seen.get(key, ()) if all(map(torch.equal, other, image))), None)
        if first is None:
            first = row
            seen.setdefault(key, []).append((image, row))
        index.append(first)
    return torch.tensor(index, device=ids.device), images


def generate_sharing_prefill(model, generate, **inputs):
    """`generate(**inputs)` with each distinct prompt prefilled once (see the module docstring)."""
    config = inputs.get("generation_config") or model.generation_config
    implementation = inputs.get("cache_implementation", getattr(config, "cache_implementation", None))
    shared = family(model.config.model_type)
    if implementation not in (None, "dynamic") or not shared.shared_prefill:
        return generate(**inputs)
    layout = shared.image_layout
    distinct_rows = _distinct_rows(inputs, layout)
    if distinct_rows is None:
        return generate(**inputs)
    index, images = distinct_rows
    distinct = torch.unique(index)
    if len(distinct) == len(index):
        return generate(**inputs)
    mask = inputs["attention_mask"][distinct, :-1]
    prefix = {
        "input_ids": inputs["input_ids"][distinct, :-1],
        "attention_mask": mask,
        **layout.join([images[i] for i in distinct.tolist()]),
    }
    for key in TOKEN_INPUTS:
        if inputs.get(key) is not None:
            prefix[key] = inputs[key][distinct, :-1]
    inner = getattr(unwrap_peft(model), "model", None)  # under peft (LoRA) too: where rope_deltas live
    rope_deltas = hasattr(inner, "rope_deltas")
    if not rope_deltas:  # generate's positions: counted over the unpadded tokens
        prefix["position_ids"] = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = DynamicCache()
    with torch.no_grad():
        model(**prefix, cache=cache, use_cache=True)
    position = torch.searchsorted(distinct, index)  # each row's place among the distinct rows
    cache.reorder_cache(position)
    if rope_deltas:
        inner.rope_deltas = inner.rope_deltas[position]
    rest = {k: v for k, v in inputs.items() if k not in layout.keys}
    return generate(**rest, cache=cache)
