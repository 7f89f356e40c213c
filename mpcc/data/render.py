"""Turn stored rows into masked images: used by the build's workers and, for builds that store no
pixels (`image_format="lazy"`), on access at training or evaluation time. Both paths call the same
function with the same seed, so a lazily rendered image equals the one a build would have stored.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from mpcc.data.masking import MaskSpec, decode, render_masked, to_rgb
from mpcc.errors import ConfigError, InputError
from mpcc.records import read_build
from mpcc.seeds import mix_seed

IMAGE_FORMATS = (
    "png",
    "webp",
    "lazy",
)  # png / webp: lossless pixels in the dataset; lazy: rendered on access


def target_seed(seed: int, ann_id: int) -> int:
    """Per-target seed (noise fill), independent of build order and process."""
    return mix_seed(seed, ann_id)


def mask_rle(mask: dict) -> dict:
    """The dataset's `mask` column as pycocotools wants it (counts as bytes)."""
    return {"size": list(mask["size"]), "counts": mask["counts"].encode("ascii")}


def render_targets(
    path: str | Path | BinaryIO, targets: list[tuple[int, dict, list]], spec: MaskSpec, seed: int
) -> dict[int, Image.Image]:
    """Decode one image file (a path, or the file's bytes as a file object) once and hide each of its
    targets (ann_id, mask column, bbox) in turn."""
    with Image.open(path) as im:
        image = to_rgb(im)
    return {
        ann_id: render_masked(image, decode(mask_rle(mask)), bbox, spec, seed=target_seed(seed, ann_id))
        for ann_id, mask, bbox in targets
    }


def encode(image: Image.Image, image_format: str) -> bytes:
    """Lossless bytes, so every hidden pixel stays exactly the fill."""
    buf = io.BytesIO()
    if image_format == "png":
        image.save(buf, format="PNG", compress_level=1)
    elif image_format == "webp":
        image.save(buf, format="WEBP", lossless=True, quality=0, method=0)
    else:
        raise ConfigError(f"cannot encode to {image_format!r}; choose png or webp")
    return buf.getvalue()


RENDER_INPUTS = ("file_name", "ann_id", "mask", "bbox")


def load_dataset(path: str | Path, images_dir: str | Path | None = None):
    """Open a build, with a clear error when `path` is not one. For lazy builds the `image` column is
    rendered on access from the original files (in `images_dir`, default: the one recorded at build
    time); a selection of columns without the render inputs (file name, ann id, mask, bbox) is
    returned as stored, so reading light columns never decodes images."""
    from datasets import Dataset, load_from_disk

    path = Path(path)
    record = read_build(path)
    try:
        dataset = load_from_disk(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: not an mpcc build ({type(e).__name__}: {e})") from e
    if not isinstance(dataset, Dataset):
        raise InputError(f"{path}: holds a DatasetDict, not one mpcc build")
    if record.config.get("image_format") != "lazy":
        return dataset
    spec, seed = MaskSpec(**record.mask), record.seed
    root = Path(images_dir or record.images_dir)

    def render(batch: dict) -> dict:
        if not all(key in batch for key in RENDER_INPUTS):
            return batch
        rows = zip(*(batch[key] for key in RENDER_INPUTS))
        images = [
            render_targets(root / name, [(ann_id, mask, bbox)], spec, seed)[ann_id]
            for name, ann_id, mask, bbox in rows
        ]
        return {**batch, "image": images}

    dataset.set_transform(render)
    return dataset
