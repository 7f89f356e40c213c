"""A static HTML preview of a built MPCC dataset, so a person can eyeball a build before training on it.

For a few rows, spread over difficulty levels (and question formats), the page shows the
original image with the hidden target's mask outline and box, the masked image the model sees, the
question, the options with the correct one highlighted, the solution and the difficulty. Only the
chosen rows are decoded, so previewing a large build stays cheap.
"""

from __future__ import annotations

import html
import logging
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset
from PIL import Image, ImageDraw

from mpcc.data.answer_options import LETTERS
from mpcc.data.build import BUILD_FORMATS
from mpcc.data.difficulty import LEVELS
from mpcc.data.masking import decode, dilate, to_rgb
from mpcc.data.render import load_dataset
from mpcc.errors import ConfigError, InputError
from mpcc.options import option
from mpcc.records import read_build

logger = logging.getLogger(__name__)

THUMB_MAX = 320
OUTLINE_COLOUR = (255, 0, 255)  # magenta: rare in photos and distinct from the black fill
OUTLINE_WIDTH = 2  # thumbnail pixels; the erosion radius, so the outline stays inside the mask
BBOX_COLOUR = (255, 215, 0)
THUMBS = "thumbs"
_THUMB_NAME = re.compile(r"^\d{4}-\d+-(orig|masked)\.png$")
_REQUIRED = (
    "image",
    "file_name",
    "width",
    "height",
    "bbox",
    "mask",
    "category",
    "supercategory",
    "difficulty",
    "difficulty_score",
    "prompt",
)


def erode(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Square (Chebyshev) erosion; outside the image counts as background, so edge pixels are boundary."""
    if radius <= 0:
        return mask.copy()
    padded = np.pad(mask.astype(bool), radius, constant_values=False)
    return ~dilate(~padded, radius)[radius:-radius, radius:-radius]


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The mask's boundary band: mask XOR its erosion (always a subset of the mask)."""
    mask = mask.astype(bool)
    return mask ^ erode(mask, width)


def thumb_size(width: int, height: int, max_side: int = THUMB_MAX) -> tuple[int, int]:
    """Size that fits in max_side x max_side, never upscaled."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask to size (w, h), as the thumbnails use it."""
    if (mask.shape[1], mask.shape[0]) == size:
        return mask.astype(bool)
    im = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
    return np.asarray(im) > 127


def draw_target(image: Image.Image, mask: np.ndarray, bbox, size: tuple[int, int]) -> Image.Image:
    """Thumbnail of `image` with the bbox rectangle and, on top, the mask outline.

    Both are drawn at thumbnail resolution so a 1-2 px line survives the downscale and the outline
    pixels are exactly the boundary band of the resized mask.
    """
    thumb = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    sx, sy = size[0] / image.width, size[1] / image.height
    x, y, w, h = bbox
    box = [x * sx, y * sy, max(x * sx, (x + w) * sx - 1), max(y * sy, (y + h) * sy - 1)]
    ImageDraw.Draw(thumb).rectangle(box, outline=BBOX_COLOUR, width=1)
    pixels = np.array(thumb)
    pixels[outline(resize_mask(mask, size), OUTLINE_WIDTH)] = OUTLINE_COLOUR
    return Image.fromarray(pixels)


def _save_png(image: Image.Image, path: Path) -> None:
    """PNG without metadata: the same pixels give the same bytes, so previews can be diffed."""
    image.save(path, format="PNG", optimize=False, compress_level=6)


def load_dataset_dir(dataset_dir: str | Path) -> Dataset:
    """The build at dataset_dir, or an InputError that names the path and what is wrong."""
    path = Path(dataset_dir)
    if not path.is_dir():
        raise InputError(f"{path}: not a directory (expected a dataset written by `mpcc prepare`)")
    ds = load_dataset(path)
    missing = [c for c in _REQUIRED if c not in ds.column_names]
    if missing:
        raise InputError(f"{path}: not an MPCC dataset (missing columns {missing})")
    return ds


def choose_rows(difficulty: list[str], formats: list[str] | None, num: int, seed: int) -> list[int]:
    """Up to num row indices, round-robin over (level, format) groups, random within each group.

    Round-robin keeps scarce groups (hard items, mc formats) visible even when one group dominates.
    The result is sorted by level, format and index so the page reads in a stable order.
    """
    n = len(difficulty)
    if num >= n:
        indices = list(range(n))
    else:
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, lv in enumerate(difficulty):
            groups[(lv, formats[i] if formats else "")].append(i)
        rng = random.Random(f"mpcc-preview:{seed}")
        queues = []
        for key in sorted(groups, key=_group_order):
            members = groups[key]
            rng.shuffle(members)
            queues.append(members)
        indices = []
        while len(indices) < num:
            for queue in queues:
                if queue and len(indices) < num:
                    indices.append(queue.pop())
    return sorted(indices, key=lambda i: (_group_order((difficulty[i], formats[i] if formats else "")), i))


def _group_order(key: tuple[str, str]) -> tuple:
    lv, fmt = key
    return (LEVELS.index(lv) if lv in LEVELS else len(LEVELS), lv or "", fmt or "")


def question_text(prompt: list[dict]) -> str:
    """The user's text part(s): what the model is asked, without the system prompt."""
    parts = [
        c.get("text") or ""
        for m in prompt
        if m.get("role") == "user"
        for c in m.get("content") or []
        if c.get("type") == "text"
    ]
    return "\n".join(p for p in parts if p)


def _build_images_dir(path: Path) -> Path | None:
    try:
        return Path(read_build(path).images_dir)
    except InputError as e:
        logger.warning(
            "%s: no usable images_dir in the build record (%s); originals cannot be shown", path, e
        )
        return None


def _load_original(images_dir: Path | None, row: dict) -> tuple[Image.Image | None, str]:
    """The original image, or None and the reason it cannot be used (shown on the page)."""
    if images_dir is None:
        return None, "no images directory known"
    file = images_dir / row["file_name"]
    if not file.is_file():
        return None, f"original not found: {file}"
    try:
        with Image.open(file) as im:
            image = to_rgb(im)
    except Exception as e:  # a bad file must cost one panel, not the preview
        return None, f"original unreadable: {file} ({type(e).__name__}: {e})"
    if image.size != (row["width"], row["height"]):
        return None, (
            f"original {file} is {image.size[0]}x{image.size[1]}, row says {row['width']}x{row['height']}"
        )
    return image, ""


@dataclass
class _Card:
    index: int
    row: dict
    orig_thumb: str
    masked_thumb: str
    fallback: str


def _write_thumbs(position: int, index: int, row: dict, images_dir: Path | None, thumbs: Path) -> _Card:
    masked = row["image"].convert("RGB")
    rle = row["mask"]
    mask = decode({"size": list(rle["size"]), "counts": rle["counts"].encode()})
    original, fallback = _load_original(images_dir, row)
    base = original if original is not None else masked
    if mask.shape != (base.height, base.width):
        raise InputError(
            f"row {index}: mask is {mask.shape[1]}x{mask.shape[0]} but image is {base.width}x{base.height}"
        )
    size = thumb_size(base.width, base.height)
    stem = f"{position:04d}-{index}"
    orig_name, masked_name = f"{stem}-orig.png", f"{stem}-masked.png"
    _save_png(draw_target(base, mask, row["bbox"], size), thumbs / orig_name)
    _save_png(masked.resize(size, Image.Resampling.LANCZOS), thumbs / masked_name)
    return _Card(index, row, f"{THUMBS}/{orig_name}", f"{THUMBS}/{masked_name}", fallback)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _options_html(row: dict) -> str:
    fmt = row.get("format")
    if not fmt or fmt == "open":
        return f'<p class="answer">answer (open): <b>{_e(row["category"])}</b></p>'
    items = []
    kinds = row.get("option_kinds") or []
    for i, choice in enumerate(row.get("options") or []):
        label = LETTERS[i] if fmt != "yesno" else choice
        correct = label == row.get("answer")
        kind = f' <span class="kind">{_e(kinds[i])}</span>' if i < len(kinds) and kinds[i] else ""
        text = f"{_e(LETTERS[i])}. {_e(choice)}" if fmt != "yesno" else _e(choice)
        items.append(f'<li class="{"correct" if correct else "option"}">{text}{kind}</li>')
    asked = ""
    if fmt == "yesno" and row.get("candidate"):
        asked = (
            f"<p>candidate: <b>{_e(row['candidate'])}</b>"
            f' <span class="kind">{_e(row.get("candidate_kind") or "")}</span></p>'
        )
    return (
        f'{asked}<ul class="options">{"".join(items)}</ul>'
        f'<p class="answer">answer: <b>{_e(row.get("answer"))}</b></p>'
    )


def _card_html(card: _Card) -> str:
    row = card.row
    tags = [
        f'<span class="tag level-{_e(row["difficulty"])}">{_e(row["difficulty"])} '
        f"{float(row['difficulty_score']):.3f}</span>"
    ]
    if row.get("format"):
        tags.append(f'<span class="tag">{_e(row["format"])}</span>')
    if "in_distribution" in row and row["in_distribution"] is not None:
        tags.append(
            '<span class="tag">in-distribution</span>'
            if row["in_distribution"]
            else '<span class="tag ood">out-of-distribution</span>'
        )
    if card.fallback:
        orig_caption = (
            f'<figcaption class="fallback">{_e(card.fallback)}; '
            "outline drawn on the masked image</figcaption>"
        )
    else:
        orig_caption = "<figcaption>original + target outline</figcaption>"
    reasoning = row.get("reasoning")
    reasoning_html = (
        f"<details><summary>reasoning</summary><pre>{_e(reasoning)}</pre></details>" if reasoning else ""
    )
    return (
        f'<div class="card" id="row-{card.index}">\n'
        f'<div class="meta">row {card.index} &middot; {_e(row["file_name"])} {" ".join(tags)}</div>\n'
        f'<div class="pics"><figure><img src="{_e(card.orig_thumb)}" alt="original with outline">'
        f"{orig_caption}</figure>"
        f'<figure><img src="{_e(card.masked_thumb)}" alt="masked image"><figcaption>masked (model input)'
        "</figcaption></figure></div>\n"
        f'<pre class="question">{_e(question_text(row["prompt"]))}</pre>\n'
        f"{_options_html(row)}\n"
        f'<p class="solution">solution: <b>{_e(row["category"])}</b> / {_e(row["supercategory"])}</p>\n'
        f"{reasoning_html}</div>"
    )


_CSS = """
body{font-family:system-ui,sans-serif;margin:1em;background:#fafafa;color:#222}
header{margin-bottom:1em} header td,header th{padding:0 .6em;text-align:left;word-break:break-word}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(680px,100%),1fr));gap:12px}
.card{background:#fff;border:1px solid #ccc;border-radius:6px;padding:8px}
.pics{display:flex;flex-wrap:wrap;gap:6px} figure{margin:0;min-width:0}
img{display:block;max-width:min(320px,100%);height:auto}
figcaption{font-size:.8em;color:#555} .fallback{color:#b00}
.question{white-space:pre-wrap;overflow-wrap:anywhere;font-size:.85em;background:#f3f3f3;padding:4px}
.options{margin:.2em 0} .correct{background:#c8f7c5;font-weight:bold}
.tag{font-size:.8em;border:1px solid #999;border-radius:3px;padding:0 4px;margin-left:4px}
.level-easy{background:#e0f3e0} .level-middle{background:#fff3c4} .level-hard{background:#f8d0d0}
.ood{background:#e6d5ff} .kind{font-size:.75em;color:#777}
"""


def _counts_html(title: str, counts: Counter, order: tuple[str, ...] = ()) -> str:
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    cells = "".join(f"<td>{_e(k)}: {counts[k]}</td>" for k in keys)
    return f"<tr><th>{_e(title)}</th>{cells}</tr>"


def _page(
    dataset_dir: Path,
    num_rows: int,
    levels: Counter,
    formats: Counter | None,
    ood: int | None,
    images_dir: Path | None,
    seed: int,
    cards: list[_Card],
) -> str:
    rows = [
        f"<tr><th>dataset</th><td>{_e(dataset_dir)}</td></tr>",
        f"<tr><th>rows</th><td>{num_rows}</td></tr>",
        _counts_html("difficulty", levels, LEVELS),
    ]
    if formats is not None:
        rows.append(_counts_html("format", formats, BUILD_FORMATS))
    if ood is not None:
        rows.append(f"<tr><th>out-of-distribution rows</th><td>{ood}</td></tr>")
    rows.append(f"<tr><th>originals</th><td>{_e(images_dir) if images_dir else 'unknown'}</td></tr>")
    rows.append(f"<tr><th>shown</th><td>{len(cards)} samples (seed {seed})</td></tr>")
    fallbacks = sum(1 for c in cards if c.fallback)
    if fallbacks:
        rows.append(
            f'<tr><th>fallbacks</th><td class="fallback">{fallbacks} samples without their original '
            "image: outline drawn on the masked image</td></tr>"
        )
    body = "\n".join(_card_html(c) for c in cards)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>MPCC preview: {_e(dataset_dir.name)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>MPCC preview</h1><table>{''.join(rows)}</table></header>\n"
        f'<div class="grid">\n{body}\n</div>\n</body>\n</html>\n'
    )


@dataclass(frozen=True)
class PreviewJob:
    """`mpcc inspect`: an HTML page with thumbnails (original with mask outline, masked image, question,
    options, answer and difficulty) for N samples."""

    dataset: Path = option(help="a dataset written by `mpcc prepare`", positional=True)
    out: Path = option(help="directory for index.html and thumbnails")
    num: int = option(24, "samples to show", minimum=1)
    seed: int = option(0, "which samples", minimum=0)
    images: Path | None = option(None, "original images directory (default: the one recorded at build)")


def write_preview(
    dataset_dir: str | Path,
    out_dir: str | Path,
    num: int = PreviewJob.num,
    seed: int = PreviewJob.seed,
    images_dir: str | Path | None = None,
) -> Path:
    """Write out_dir/index.html and out_dir/thumbs/*.png for `num` rows of the dataset; return the page.

    Originals come from `images_dir`, else from the build record's `images_dir`; when one is missing
    the outline goes on the masked image instead and the card says so. Same inputs and seed give the
    same files byte for byte.
    """
    if num < 0:
        raise ConfigError(f"num must be >= 0, got {num}")
    dataset_dir = Path(dataset_dir).resolve()
    ds = load_dataset_dir(dataset_dir)
    originals = Path(images_dir).resolve() if images_dir is not None else _build_images_dir(dataset_dir)
    # eval builds and train builds since the formats option have `format`; only eval builds flag OOD
    optional = [c for c in ("format", "in_distribution") if c in ds.column_names]
    light = ds.select_columns(["difficulty", *optional]).to_dict()
    chosen = choose_rows(light["difficulty"], light.get("format"), num, seed)

    out = Path(out_dir)
    thumbs = out / THUMBS
    thumbs.mkdir(parents=True, exist_ok=True)
    for stale in thumbs.iterdir():  # only files this module wrote; anything else is left alone
        if stale.is_file() and _THUMB_NAME.match(stale.name):
            stale.unlink()
    cards = [
        _write_thumbs(position, index, row, originals, thumbs)
        for position, (index, row) in enumerate(zip(chosen, ds.select(chosen)))
    ]
    for card in cards:
        if card.fallback:
            logger.warning("row %d: %s", card.index, card.fallback)

    page = _page(
        dataset_dir,
        len(ds),
        Counter(light["difficulty"]),
        Counter(light["format"]) if "format" in light else None,
        sum(1 for v in light["in_distribution"] if v is False) if "in_distribution" in light else None,
        originals,
        seed,
        cards,
    )
    index_html = out / "index.html"
    index_html.write_text(page, encoding="utf-8")
    logger.info("wrote preview of %d/%d rows of %s to %s", len(cards), len(ds), dataset_dir, index_html)
    return index_html
