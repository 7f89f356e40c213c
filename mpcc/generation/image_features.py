"""Encode each image once: a memo of the vision tower's outputs, keyed by image content.

In a GRPO step the G rows of a group carry the same image, and generation, the reference model, old
log-probs and the policy forward each run the vision tower on all of them. With the memo installed,
`get_image_features` encodes only images it has not seen since the memo was last cleared: duplicates
within a call and repeats across calls (and across models sharing a frozen tower) reuse the features.

An image's key is its grid (t, h, w) and its pixel patches, compared exactly (a cheap checksum finds
the candidates, `torch.equal` decides), so two different images never share features. The memo steps
aside whenever a gradient could flow into the tower (grad enabled and any tower parameter trainable):
a trainable tower is reused only in no-grad passes (generation, reference and old log-probs). Clear it
when the tower's weights may change and at each new batch (`clear`), so memory stays one step's images;
an evaluation, whose rows of one item come together, keeps only the last `max_images` images.
"""

from __future__ import annotations

import functools
from collections import Counter

import torch

from mpcc.errors import ConfigError
from mpcc.models import image_slices


class ImageFeatureMemo:
    """Install on one or more models with `attach`; `counts` says what was encoded and what reused."""

    def __init__(self, max_images: int | None = None):
        self.max_images = max_images  # the oldest images are dropped beyond this (None: until `clear`)
        self._entries: dict[tuple, list[tuple[torch.Tensor, list]]] = {}
        self._output_type: type | None = None
        self.counts: Counter = Counter()

    def clear(self) -> None:
        self._entries.clear()

    def attach(self, model) -> None:
        """Route `model`'s image encoding through the memo (Qwen2-VL, Qwen2.5-VL, Qwen3-VL families)."""
        inner = _inner(model)
        original = inner.get_image_features
        if getattr(original, "_mpcc_memo", None) is not None:
            raise ConfigError("this model already has an image-feature memo attached")
        tower = inner.visual

        @functools.wraps(original)
        def get_image_features(pixel_values, image_grid_thw=None, **kwargs):
            trainable = torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters())
            if trainable or image_grid_thw is None:
                self.counts["bypassed_calls"] += 1
                return original(pixel_values, image_grid_thw, **kwargs)
            return self._features(original, tower, pixel_values, image_grid_thw, **kwargs)

        get_image_features._mpcc_memo = self
        inner.get_image_features = get_image_features

    def detach(self, model) -> None:
        """Give `model` back its own image encoding."""
        inner = _inner(model)
        if getattr(inner.get_image_features, "_mpcc_memo", None) is not self:
            raise ConfigError("this memo is not attached to this model")
        del inner.get_image_features  # the instance attribute: the class's method shows again

    def _features(self, original, tower, pixel_values, grid_thw, **kwargs):
        images = [pixel_values[s] for s in image_slices(grid_thw)]
        order, new, pending = [], [], {}  # per image: its cached features, or its index among the new
        for pixels, grid in zip(images, grid_thw.tolist()):
            key = (id(tower), *grid, _checksum(pixels))
            found = _find(self._entries.get(key, ()), pixels)
            if found is None:
                found = _find(pending.get(key, ()), pixels)
            if found is None:
                found = len(new)
                new.append((pixels, grid, key))
                pending.setdefault(key, []).append((pixels, found))
            order.append(found)
        self.counts["images"] += len(images)
        self.counts["encoded"] += len(new)
        self.counts["patches_encoded"] += sum(p.shape[0] for p, _, _ in new)
        if new:
            grids = torch.tensor([g for _, g, _ in new], dtype=grid_thw.dtype, device=grid_thw.device)
            out = original(torch.cat([p for p, _, _ in new]), grids, **kwargs)
            self._output_type = type(out)
            computed = [_per_image(out, i) for i in range(len(new))]
            for (pixels, _, key), features in zip(new, computed):
                self._entries.setdefault(key, []).append((pixels, features))
            while self.max_images is not None and len(self._entries) > self.max_images:
                del self._entries[next(iter(self._entries))]  # insertion order: the oldest first
            order = [computed[f] if isinstance(f, int) else f for f in order]
        return _assemble(self._output_type, order)


def _find(pairs, pixels: torch.Tensor):
    """The value paired with exactly these pixels, or None."""
    return next((value for p, value in pairs if torch.equal(p, pixels)), None)


def _inner(model):
    """The module that owns `get_image_features` and `visual` (under peft and the generation head)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", base)
    if not hasattr(inner, "visual") or not hasattr(inner, "get_image_features"):
        raise ConfigError(f"{type(base).__name__}: no vision tower with get_image_features to memoise")
    return inner


def _checksum(pixels: torch.Tensor) -> tuple[float, float]:
    """Two sums that tell most different images apart cheaply; equality is then checked exactly."""
    flat = pixels.reshape(-1).float()
    weights = torch.arange(1, 8, device=flat.device, dtype=flat.dtype).repeat(flat.numel() // 7 + 1)
    return float(flat.sum()), float((flat * weights[: flat.numel()]).sum())


def _per_image(out, i: int) -> list:
    """One image's features: its pooled embeddings, then its slice of each deepstack layer (Qwen3-VL)."""
    deepstack = getattr(out, "deepstack_features", None) or []
    return [out.pooler_output[i], *(layer[i] for layer in deepstack)]


def _assemble(output_type: type, per_image: list[list]):
    """The model's own output type, as `get_image_features` returns it: per-image tuples."""
    fields = {"pooler_output": tuple(f[0] for f in per_image)}
    layers = len(per_image[0]) - 1 if per_image else 0
    if layers:
        fields["deepstack_features"] = [tuple(f[1 + j] for f in per_image) for j in range(layers)]
    return output_type(**fields)
