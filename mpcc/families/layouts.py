"""Where each image lies in a batch's image inputs: a family's `image_layout`.

The encode-once memo (`mpcc.generation.image_features`) and the shared prefill
(`mpcc.generation.shared_prefill`) take a batch's images apart to compare them, and put some back together
in the layout the model takes. The inputs are named as the processor returns them, which are also the
names of the model's `get_image_features` arguments; each image's features are read from, and put back
into, that method's output as the model reads it.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def image_slices(grid_thw) -> list[slice]:
    """Where each image's patches lie in a batch's `pixel_values` (Qwen-VL processors: t*h*w rows per
    image, images in order); `grid_thw` a tensor, array or nested list."""
    ends = np.cumsum(np.asarray(grid_thw.tolist() if hasattr(grid_thw, "tolist") else grid_thw).prod(-1))
    return [slice(int(end - size), int(end)) for end, size in zip(ends, np.diff(ends, prepend=0))]


class Patches:
    """Qwen-VL and GLM: every image's patches concatenated in `pixel_values`, one `image_grid_thw` row per
    image; the features per image, with Qwen3-VL's deepstack layers."""

    keys = ("pixel_values", "image_grid_thw")

    def split(self, inputs: dict) -> list[tuple]:
        grid = inputs["image_grid_thw"]
        return [(inputs["pixel_values"][s], g) for s, g in zip(image_slices(grid), grid)]

    def join(self, images: list[tuple]) -> dict:
        return {
            "pixel_values": torch.cat([p for p, _ in images]),
            "image_grid_thw": torch.stack([g for _, g in images]),
        }

    def size(self, image: tuple) -> int:
        """The tower's inputs for one image: its patches."""
        return image[0].shape[0]

    def features(self, output) -> list[list]:
        deepstack = getattr(output, "deepstack_features", None) or []
        return [[f, *(layer[i] for layer in deepstack)] for i, f in enumerate(output.pooler_output)]

    def assemble(self, output_type: type, per_image: list[list]):
        fields = {"pooler_output": tuple(f[0] for f in per_image)}
        layers = len(per_image[0]) - 1 if per_image else 0
        if layers:
            fields["deepstack_features"] = [tuple(f[1 + j] for f in per_image) for j in range(layers)]
        return output_type(**fields)


class Stacked:
    """One entry per image along the first dimension of each of `keys` (a tile stack, a size, ...); the
    features one `pooler_output` entry per image, stacked in one tensor where the model takes it so
    (`stacked_features`), else a sequence."""

    def __init__(self, *keys: str, stacked_features: bool):
        self.keys = keys
        self.stacked_features = stacked_features

    def split(self, inputs: dict) -> list[tuple] | None:
        """Per image, its entry of each input; None when the inputs are not one entry per image."""
        if len({len(inputs[k]) for k in self.keys}) != 1:
            return None
        return list(zip(*(inputs[k] for k in self.keys)))

    def join(self, images: list[tuple]) -> dict:
        return {k: torch.stack(parts) for k, parts in zip(self.keys, zip(*images))}

    def size(self, image: tuple) -> int:
        """The tower's inputs for one image: its tiles (a C x H x W image is one)."""
        return math.prod(image[0].shape[:-3])

    def features(self, output) -> list[list]:
        return [[f] for f in output.pooler_output]

    def assemble(self, output_type: type, per_image: list[list]):
        features = [f[0] for f in per_image]
        return output_type(pooler_output=torch.stack(features) if self.stacked_features else tuple(features))


PATCHES = Patches()
