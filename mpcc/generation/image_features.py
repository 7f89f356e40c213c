"""Encode each image once: a memo of the vision tower's outputs, keyed by image content.

In a GRPO step the G rows of a group carry the same image, and generation, the reference model, old
log-probs and the policy forward each run the vision tower on all of them. With the memo installed,
`get_image_features` encodes only images it has not seen since the memo was last cleared: duplicates
within a call and repeats across calls (and across models sharing a frozen tower) reuse the features.

An image's inputs (its family's `image_layout`: Qwen-VL's patches and grid row, another family's tiles,
size, ...) are its key, compared exactly (a cheap checksum finds the candidates, `torch.equal` decides), so
two different images never share features. The memo steps aside whenever a gradient could flow into the
image path (grad enabled and any parameter outside the language model trainable: tower or projector): a
trainable one is reused only in no-grad passes (generation, reference and old log-probs). Clear it
when the tower's weights may change and at each new batch (`clear`), so memory stays one step's images;
an evaluation, whose rows of one item come together, keeps only the last `max_images` images.
"""

from __future__ import annotations

import functools
import inspect
from collections import Counter

import torch

from mpcc.errors import ConfigError
from mpcc.families import family
from mpcc.models import unwrap_peft


class ImageFeatureMemo:
    """Install on one or more models with `attach`; `counts` says what was encoded and what reused (in
    the layout's entries: images, InternVL's tiles)."""

    def __init__(self, max_images: int | None = None):
        self.max_images = max_images  # the oldest images are dropped beyond this (None: until `clear`)
        self._entries: dict[tuple, list[tuple[tuple, list]]] = {}
        self._output_type: type | None = None
        self.counts: Counter = Counter()

    def clear(self) -> None:
        self._entries.clear()

    def attach(self, model) -> None:
        """Route `model`'s image encoding through the memo (the families with `image_feature_memo`)."""
        inner, layout = _inner(model)
        original = inner.get_image_features
        if getattr(original, "_mpcc_memo", None) is not None:
            raise ConfigError("this model already has an image-feature memo attached")
        names = list(inspect.signature(original).parameters)

        @functools.wraps(original)
        def get_image_features(*args, **kwargs):
            named = dict(zip(names, args)) | kwargs
            images = {k: named.pop(k, None) for k in layout.keys}
            split = None if any(v is None for v in images.values()) else layout.split(images)
            if split is None or _trainable(inner):
                self.counts["bypassed_calls"] += 1
                return original(*args, **kwargs)
            return self._features(original, inner, layout, split, named)

        get_image_features._mpcc_memo = self
        inner.get_image_features = get_image_features

    def detach(self, model) -> None:
        """Give `model` back its own image encoding."""
        inner, _ = _inner(model)
        if getattr(inner.get_image_features, "_mpcc_memo", None) is not self:
            raise ConfigError("this memo is not attached to this model")
        del inner.get_image_features  # the instance attribute: the class's method shows again

    def _features(self, original, inner, layout, images: list[tuple], kwargs: dict):
        order, new, pending = [], [], {}  # per image: its cached features, or its index among the new
        for image in images:
            key = (id(inner), *(tuple(part.shape) for part in image), _checksum(image[0]))
            found = _find(self._entries.get(key, ()), image)
            if found is None:
                found = _find(pending.get(key, ()), image)
            if found is None:
                found = len(new)
                new.append((image, key))
                pending.setdefault(key, []).append((image, found))
            order.append(found)
        self.counts["images"] += len(images)
        self.counts["encoded"] += len(new)
        self.counts["patches_encoded"] += sum(layout.size(image) for image, _ in new)
        if new:
            out = original(**layout.join([image for image, _ in new]), **kwargs)
            self._output_type = type(out)
            computed = layout.features(out)
            for (image, key), features in zip(new, computed, strict=True):
                self._entries.setdefault(key, []).append((image, features))
            while self.max_images is not None and len(self._entries) > self.max_images:
                del self._entries[next(iter(self._entries))]  # insertion order: the oldest first
            order = [computed[f] if isinstance(f, int) else f for f in order]
        return layout.assemble(self._output_type, order)


def _find(pairs, image: tuple):
    """The value paired with exactly this image (every one of its inputs equal), or None."""
    return next((value for i, value in pairs if all(map(torch.equal, i, image))), None)


def _inner(model):
    """The module that owns `get_image_features` (under peft and the generation head), and its family's
    image layout."""
    base = unwrap_peft(model)
    inner = getattr(base, "model", base)
    layout = family(base.config.model_type).image_layout
    if layout is None or not hasattr(inner, "get_image_features"):
        raise ConfigError(f"{type(base).__name__}: no image layout with get_image_features to memoise")
    return inner, layout


def _trainable(inner) -> bool:
    """Whether a gradient could flow into the image path: grad enabled and a parameter outside the
    language model (tower, projector) trainable."""
    if not torch.is_grad_enabled():
        return False
    text = {id(p) for p in inner.get_decoder().parameters()}
    return any(p.requires_grad and id(p) not in text for p in inner.parameters())


def _checksum(pixels: torch.Tensor) -> tuple[float, float]:
    """Two sums that tell most different images apart cheaply; equality is then checked exactly."""
    flat = pixels.reshape(-1).float()
    weights = torch.arange(1, 8, device=flat.device, dtype=flat.dtype).repeat(flat.numel() // 7 + 1)
    return float(flat.sum()), float((flat * weights[: flat.numel()]).sum())
