"""Prefill each distinct prompt once: a group's G rows share one prompt and image, so HF `generate`
would run the prompt (and the vision tower) G times before decoding.

`generate_sharing_prefill` finds the distinct rows of the batch (same token ids, attention mask and
image pixels), runs one forward over all but the last prompt token of each, copies its KV cache to
every row of that prompt (`Cache.reorder_cache` with the row -> distinct-row index) together with
Qwen's multimodal rope offsets (`rope_deltas`), and lets `generate` continue from there: the last
prompt token, then decoding, as usual. Greedy completions are the same tokens as without sharing.

It applies to a dynamic KV cache, one image per row and the Qwen-VL families (their `rope_deltas`);
otherwise, or when no prompt repeats, it is plain `generate`. A static cache (compiled decoding) is
allocated inside `generate` for the whole batch and is not shared: those runs prefill every row.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from mpcc.models import image_slices


def _distinct_rows(inputs: dict) -> torch.Tensor | None:
    """Per row, the index of the first row with the same ids, mask and image; None when not applicable."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    grid, pixels = inputs.get("image_grid_thw"), inputs.get("pixel_values")
    if grid is None or pixels is None or len(grid) != len(ids):
        return None  # rows without an image, or several per row
    images = [pixels[s] for s in image_slices(grid)]
    seen: dict[tuple, list] = {}
    index = []
    for row in range(len(ids)):
        key = (ids[row].cpu().numpy().tobytes(), mask[row].cpu().numpy().tobytes(), *grid[row].tolist())
        first = next((r for image, r in seen.get(key, ()) if torch.equal(image, images[row])), None)
        if first is None:
            first = row
            seen.setdefault(key, []).append((images[row], row))
        index.append(first)
    return torch.tensor(index, device=ids.device)


def generate_sharing_prefill(model, generate, **inputs):
    """`generate(**inputs)` with each distinct prompt prefilled once (see the module docstring)."""
    config = inputs.get("generation_config") or model.generation_config
    inner = getattr(model, "model", None)
    implementation = inputs.get("cache_implementation", getattr(config, "cache_implementation", None))
    dynamic = implementation in (None, "dynamic")
    if not dynamic or not hasattr(inner, "rope_deltas"):
        return generate(**inputs)
    index = _distinct_rows(inputs)
    if index is None:
        return generate(**inputs)
    distinct = torch.unique(index)
    if len(distinct) == len(index):
        return generate(**inputs)
    images = [inputs["pixel_values"][s] for s in image_slices(inputs["image_grid_thw"])]
    prefix = {
        "input_ids": inputs["input_ids"][distinct, :-1],
        "attention_mask": inputs["attention_mask"][distinct, :-1],
        "pixel_values": torch.cat([images[i] for i in distinct.tolist()]),
        "image_grid_thw": inputs["image_grid_thw"][distinct],
    }
    if inputs.get("mm_token_type_ids") is not None:
        prefix["mm_token_type_ids"] = inputs["mm_token_type_ids"][distinct, :-1]
    cache = DynamicCache()
    with torch.no_grad():
        model(**prefix, cache=cache, use_cache=True)
    position = torch.searchsorted(distinct, index)  # each row's place among the distinct rows
    cache.reorder_cache(position)
    inner.rope_deltas = inner.rope_deltas[position]
    rest = {k: v for k, v in inputs.items() if k not in ("pixel_values", "image_grid_thw")}
    return generate(**rest, cache=cache)
