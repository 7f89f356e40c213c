"""The measuring pass: one teacher-forced forward over prompt + completion that also returns, per
completion token, how much attention it pays to given groups of key tokens (e.g. the image tokens,
those covered by the evidence regions, those of the hidden target).

Attention mass of a query token on a key group = the sum of its softmax attention weights over the
group's keys, averaged over all heads and over the measured layers. The same pass keeps two compact
by-products for the queries the caller puts in position buckets (e.g. thirds of the reasoning): the
group masses of every measured layer and head summed per bucket (a layers x heads matrix per bucket
and group: where a per-head profile needs no second pass and no attention map), and the attention
each key receives from those queries (mean over heads and layers), from which the most-attended
image tokens are read.

The model keeps whatever attention it was loaded with (sdpa, flash) for everything else: only for
this pass, the language model's attention is switched to `ATTENTION`, which computes the same
attention as eager in chunks of queries and reduces each chunk to group masses at once, so memory
stays at one chunk of weights (at most `CHUNK_ELEMENTS` floats, over the whole batch) plus per-head
masses of the kept queries (batch x heads x groups x queries floats) however long the sequence, never a
full attention map.

A batch may hold several answers of different lengths (right-padded, `forcing.teacher_forced_pairs`):
padded keys get no attention (the mask), and per-row buckets keep each row's own queries for its
profile and received keys; each row reads its masses from its own positions.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from mpcc.errors import ConfigError
from mpcc.evaluation.grounding.forcing import window_logits

ATTENTION = "mpcc_measured"
CHUNK_ELEMENTS = 1 << 21  # attention weights held at once: 8 MB in float32 (the pass peaks a few times that)


@dataclass
class _Probe:
    layers: frozenset[int]
    groups: torch.Tensor  # (batch, groups, keys) float: 1 where a key belongs to a group
    queries: slice  # the query positions whose masses are kept (step 1)
    buckets: torch.Tensor  # (batch, kept queries) long: each kept query's position bucket, -1 for none
    n_buckets: int
    mass: torch.Tensor | None = None  # (batch, groups, queries) summed over measured layers, mean over heads
    profile: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (batch, heads, groups, buckets)
    keys: torch.Tensor | None = None  # (batch, keys): received from bucketed queries, summed over layers
    layers_seen: int = 0


@dataclass(frozen=True)
class Measured:
    """What the measuring pass returns (batch first; queries = the kept query positions)."""

    logits: torch.Tensor  # (batch, queries, vocab)
    mass: torch.Tensor  # (batch, groups, queries): mean over heads and measured layers
    profile: torch.Tensor  # (batch, layers, heads, groups, buckets): masses summed over a bucket's queries
    keys: torch.Tensor  # (batch, keys): attention from the bucketed queries, summed over them, mean over
    # heads and measured layers
    layers: tuple[int, ...]  # the measured layers, in the profile's order


_ACTIVE: contextvars.ContextVar[_Probe | None] = contextvars.ContextVar("mpcc_probe", default=None)


def _allowed(mask: torch.Tensor | None, rows: slice, q_len: int, k_len: int, device) -> torch.Tensor:
    """Bool (batch or 1, 1, rows, keys): which keys each query row of the chunk may attend to."""
    if mask is None:  # sdpa_mask skips building it only where causal is exact: no padding, no window reached
        q = torch.arange(rows.start, rows.stop, device=device)[:, None] + (k_len - q_len)
        return (torch.arange(k_len, device=device)[None, :] <= q)[None, None]
    chunk = mask[:, :, rows]
    return chunk if chunk.dtype == torch.bool else chunk == 0


def measured_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention in query chunks; on measured layers, each chunk's weights go into group masses."""
    probe = _ACTIVE.get()
    if probe is None or getattr(module, "layer_idx", None) not in probe.layers:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    if kwargs.get("softcap") is not None:
        raise ConfigError("the measuring pass does not support attention logit soft-capping")
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    batch, heads, q_len, _ = query.shape
    k_len = key.shape[2]
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    step = max(1, CHUNK_ELEMENTS // (batch * heads * k_len))
    first, last, _ = probe.queries.indices(q_len)
    out = torch.empty_like(query)
    per_head = query.new_zeros(batch, heads, probe.groups.shape[1], last - first, dtype=torch.float32)
    in_bucket = (probe.buckets >= 0).float()
    keys = query.new_zeros(batch, k_len, dtype=torch.float32)
    for start in range(0, q_len, step):
        rows = slice(start, min(q_len, start + step))
        scores = torch.matmul(query[:, :, rows], key.transpose(-1, -2)).float() * scaling
        allowed = _allowed(attention_mask, rows, q_len, k_len, query.device)
        # the lowest float, not -inf (as eager): a padded query past a sliding window attends to no key,
        # and its NaN would reach every row's output through the zero weight on its value (0 * NaN)
        scores.masked_fill_(~allowed, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        out[:, :, rows] = torch.matmul(weights.to(value.dtype), value)
        lo, hi = max(rows.start, first), min(rows.stop, last)
        if lo < hi:  # kept queries in this chunk: reduce their weights at once
            kept = weights[:, :, lo - start : hi - start]
            per_head[..., lo - first : hi - first] = torch.einsum("bhqk,bgk->bhgq", kept, probe.groups)
            keys += torch.einsum("bq,bhqk->bk", in_bucket[:, lo - first : hi - first], kept) / heads
    mass = per_head.mean(1)
    probe.mass = mass if probe.mass is None else probe.mass + mass
    probe.keys = keys if probe.keys is None else probe.keys + keys
    profile = per_head.new_zeros(*per_head.shape[:3], probe.n_buckets)
    for row, buckets in enumerate(probe.buckets):  # index_add: float32 sums even under autocast
        bucketed = buckets >= 0
        profile[row].index_add_(2, buckets[bucketed], per_head[row][..., bucketed])
    probe.profile[module.layer_idx] = profile
    probe.layers_seen += 1
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, measured_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # bool masks, or None when plainly causal


def text_layers(model) -> int:
    return int(model.config.get_text_config().num_hidden_layers)


def resolve_layers(model, layers: tuple[int, ...] | None) -> frozenset[int]:
    """Layer indices to measure: all when None; negative ones count from the last layer."""
    n = text_layers(model)
    if layers is None:
        return frozenset(range(n))
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise ConfigError(f"attention layers {bad} are out of range for a model with {n} text layers")
    return frozenset(i % n for i in layers)


@contextmanager
def _measuring(model, probe: _Probe):
    text_config = model.config.get_text_config()
    previous = text_config._attn_implementation
    model.set_attn_implementation({"text_config": ATTENTION})
    token = _ACTIVE.set(probe)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        model.set_attn_implementation({"text_config": previous})


@torch.inference_mode()
def measure(
    model, inputs: dict, groups: torch.Tensor, queries: slice, layers: frozenset[int],
    buckets: torch.Tensor | None = None, n_buckets: int = 1,
) -> Measured:  # fmt: skip
    """The forward's logits at the query positions `queries` (step 1) and their attention mass on each
    key group, averaged over heads and the measured `layers`; `buckets` (one index < `n_buckets` per kept
    query, -1 for none; default: all in bucket 0) groups queries for the per-layer, per-head profile and
    the keys' received attention (see `Measured`). `buckets` of shape (batch, kept queries) bucket each
    row's queries apart: a batch of answers of different lengths marks each one's padding and prompt -1
    and reads its masses from its own positions."""
    batch, length = inputs["input_ids"].shape
    n_queries = len(range(*queries.indices(length)))
    buckets = torch.zeros(n_queries, dtype=torch.long) if buckets is None else buckets.long()
    buckets = buckets.expand(batch, -1) if buckets.dim() == 1 else buckets
    if buckets.shape != (batch, n_queries) or (n_queries and int(buckets.max()) >= n_buckets):
        raise ConfigError(
            f"measure: buckets must be {n_queries} indices below {n_buckets} (or -1), per row or for all"
        )
    probe = _Probe(layers, groups.to(torch.float32), queries, buckets.to(groups.device), n_buckets)
    with _measuring(model, probe):
        logits = window_logits(model, inputs, slice(*queries.indices(length)[:2]))
    if probe.layers_seen != len(layers):
        raise ConfigError(
            f"measured {probe.layers_seen} of {len(layers)} attention layers: this model's attention does "
            "not dispatch through transformers' AttentionInterface"
        )
    order = tuple(sorted(probe.profile))
    return Measured(
        logits,
        probe.mass / len(layers),
        torch.stack([probe.profile[layer] for layer in order], dim=1),
        probe.keys / len(layers),
        order,
    )
