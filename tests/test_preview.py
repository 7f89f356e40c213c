"""The HTML preview: cards match thumbnails, text is escaped, outlines sit on the mask boundary,
missing originals fall back, output is deterministic, and a non-dataset dir is refused."""

from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from datasets import load_from_disk
from PIL import Image

from mpcc.data.answer_options import LETTERS
from mpcc.data.build import BuildConfig, build
from mpcc.data.masking import decode
from mpcc.data.preview import (
    OUTLINE_COLOUR,
    OUTLINE_WIDTH,
    THUMB_MAX,
    outline,
    question_text,
    resize_mask,
    write_preview,
)

CARD = re.compile(r'<div class="card" id="row-(\d+)">')
THUMB = re.compile(r'<img src="(thumbs/[^"]+\.png)"')


@pytest.fixture(scope="module")
def builds(tinycoco, tmp_path_factory):
    root = tmp_path_factory.mktemp("preview_builds")
    train, eval_ = root / "train", root / "eval"
    ann, images = tinycoco / "instances.json", tinycoco / "images"
    build(ann, images, train, BuildConfig("train"), num_proc=1)
    build(ann, images, eval_, BuildConfig("eval", stats=train), num_proc=1)
    return {"train": train, "eval": eval_}


@pytest.fixture(scope="module")
def eval_preview(builds, tmp_path_factory):
    out = tmp_path_factory.mktemp("preview_eval")
    page = write_preview(builds["eval"], out, num=9, seed=3)
    return page, page.read_text(encoding="utf-8")


def _cards(text: str) -> list[int]:
    return [int(i) for i in CARD.findall(text)]


def _mask(row: dict) -> np.ndarray:
    return decode({"size": row["mask"]["size"], "counts": row["mask"]["counts"].encode()})


def test_outline_is_mask_xor_erosion():
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True
    ring = outline(mask)
    assert ring.sum() == 25 - 9 and not ring[3:6, 3:6].any() and ring[2, 2:7].all()
    edge = np.ones((4, 4), bool)  # outside the image is background: the image border is boundary
    assert outline(edge).sum() == 16 - 4
    assert (outline(mask, 2) & ~mask).sum() == 0


def test_cards_match_thumbnails(eval_preview):
    page, text = eval_preview
    cards, thumbs = _cards(text), THUMB.findall(text)
    assert len(cards) == 9 and len(set(cards)) == 9
    assert len(thumbs) == 2 * len(cards) and len(set(thumbs)) == len(thumbs)
    for rel in thumbs:
        with Image.open(page.parent / rel) as im:
            assert im.format == "PNG"
            im.verify()
        with Image.open(page.parent / rel) as im:
            assert max(im.size) <= THUMB_MAX
    assert sorted(p.name for p in (page.parent / "thumbs").iterdir()) == sorted(Path(t).name for t in thumbs)


def test_header_counts_and_spread(builds, eval_preview):
    _, text = eval_preview
    ds = load_from_disk(str(builds["eval"]))
    assert html.escape(str(builds["eval"].resolve())) in text
    assert f"<th>rows</th><td>{len(ds)}</td>" in text
    for level, n in Counter(ds["difficulty"]).items():
        assert f"<td>{level}: {n}</td>" in text
    for fmt, n in Counter(ds["format"]).items():
        assert f"<td>{fmt}: {n}</td>" in text
    shown = ds.select(_cards(text)).select_columns(["difficulty", "format"]).to_dict()
    assert set(shown["difficulty"]) == {"easy", "middle", "hard"}
    assert set(shown["format"]) == {"mc4", "mc7", "yesno"}


def test_question_and_answer_escaped(builds, eval_preview):
    _, text = eval_preview
    ds = load_from_disk(str(builds["eval"]))
    assert "<think>" not in text and "&lt;think&gt;&lt;/think&gt;" in text
    for index in _cards(text):
        row = ds[index]
        card = text[text.index(f'id="row-{index}"') :].split('<div class="card"', 1)[0]
        question = question_text(row["prompt"])
        assert question and html.escape(question) in card
        assert f"solution: <b>{html.escape(row['category'])}</b>" in card
        assert f"answer: <b>{row['answer']}</b>" in card
        if row["format"] == "yesno":
            correct = html.escape(row["answer"])
            assert f"<b>{html.escape(row['candidate'])}</b>" in card
        else:
            k = LETTERS.index(row["answer"])
            correct = f"{row['answer']}. {html.escape(row['options'][k])}"
        assert f'<li class="correct">{correct}' in card
        assert card.count('class="correct"') == 1
        assert ("out-of-distribution" in card) != row["in_distribution"]


def test_outline_pixels_on_mask_boundary(builds, eval_preview):
    page, text = eval_preview
    ds = load_from_disk(str(builds["eval"]))
    checked = 0
    for index, rel in zip(_cards(text), THUMB.findall(text)[::2]):
        assert rel.endswith("-orig.png")
        thumb = np.asarray(Image.open(page.parent / rel).convert("RGB"))
        mask = resize_mask(_mask(ds[index]), (thumb.shape[1], thumb.shape[0]))
        band = outline(mask, OUTLINE_WIDTH)
        coloured = (thumb == OUTLINE_COLOUR).all(-1)
        if not band.any():
            continue
        checked += 1
        assert coloured[band].all()  # the whole boundary band is drawn
        # and it is drawn only there (a photo may hold a stray pure-magenta pixel, never many)
        assert (coloured & ~band).sum() <= 0.01 * coloured.sum()
        assert not coloured[mask & ~band].any()  # nothing inside the mask beyond the band
    assert checked >= 5


def test_missing_originals_fall_back(builds, tmp_path):
    empty = tmp_path / "no_images"
    empty.mkdir()
    page = write_preview(builds["train"], tmp_path / "out", num=4, seed=1, images_dir=empty)
    text = page.read_text(encoding="utf-8")
    ds = load_from_disk(str(builds["train"]))
    cards = _cards(text)
    assert len(cards) == 4 and text.count("original not found") == 4
    assert "outline drawn on the masked image" in text
    for index, rel in zip(cards, THUMB.findall(text)[::2]):
        thumb = np.asarray(Image.open(page.parent / rel).convert("RGB"))
        mask = resize_mask(_mask(ds[index]), (thumb.shape[1], thumb.shape[0]))
        inner = mask & ~outline(mask, OUTLINE_WIDTH + 2)  # well inside: the black fill of the masked image
        if inner.any():
            assert (thumb[inner] < 40).all()
    # with no images_dir the build record's path is used, so originals are found
    text = write_preview(builds["train"], tmp_path / "out2", num=4, seed=1).read_text(encoding="utf-8")
    assert "original not found" not in text and "original + target outline" in text


def test_deterministic_for_seed(builds, tmp_path):
    a = write_preview(builds["eval"], tmp_path / "a", num=5, seed=7)
    b = write_preview(builds["eval"], tmp_path / "b", num=5, seed=7)
    assert a.read_bytes() == b.read_bytes()
    files_a = sorted((tmp_path / "a" / "thumbs").iterdir())
    assert [f.name for f in files_a] == sorted(f.name for f in (tmp_path / "b" / "thumbs").iterdir())
    for f in files_a:
        assert f.read_bytes() == (tmp_path / "b" / "thumbs" / f.name).read_bytes()
    c = write_preview(builds["eval"], tmp_path / "c", num=5, seed=8)
    assert _cards(c.read_text()) != _cards(a.read_text())


def test_all_rows_when_few_and_rewrite_cleans(builds, tmp_path):
    n = len(load_from_disk(str(builds["train"])))
    out = tmp_path / "out"
    (out / "thumbs").mkdir(parents=True)
    (out / "thumbs" / "keep.txt").write_text("not ours")
    text = write_preview(builds["train"], out, num=n + 50).read_text()
    assert sorted(_cards(text)) == list(range(n))
    text = write_preview(builds["train"], out, num=2).read_text()
    assert len(list((out / "thumbs").glob("*.png"))) == len(THUMB.findall(text)) == 4
    assert (out / "thumbs" / "keep.txt").exists()


def test_not_a_dataset(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match=re.escape(str(junk.resolve()))):
        write_preview(junk, tmp_path / "out")
    with pytest.raises(ValueError, match="missing_dir"):
        write_preview(tmp_path / "missing_dir", tmp_path / "out")


def test_decodes_only_chosen_rows(builds, tmp_path, monkeypatch):
    calls = []
    original = datasets.Image.decode_example

    def counting(self, value, token_per_repo_id=None):
        calls.append(1)
        return original(self, value, token_per_repo_id=token_per_repo_id)

    monkeypatch.setattr(datasets.Image, "decode_example", counting)
    write_preview(builds["eval"], tmp_path / "out", num=3)
    assert len(calls) == 3


def test_train_build_in_every_format(tmp_path):
    """A train build's cards ask each row's own question and highlight its answer; no OOD line (train
    rows have no flag), and an open card names the category."""
    from mpcc.data.synthetic import generate_scenes

    scenes, train = tmp_path / "scenes", tmp_path / "train"
    generate_scenes(scenes, num_images=20, seed=0)
    config = BuildConfig("train", formats=("open", "mc4", "mc7", "yesno"))
    build(scenes / "instances.json", scenes / "images", train, config, num_proc=1)
    text = write_preview(train, tmp_path / "out", num=12, seed=0).read_text(encoding="utf-8")
    ds = load_from_disk(str(train))
    for fmt, n in Counter(ds["format"]).items():
        assert f"<td>{fmt}: {n}</td>" in text
    assert "out-of-distribution" not in text
    shown = set()
    for index in _cards(text):
        row = ds[index]
        shown.add(row["format"])
        card = text[text.index(f'id="row-{index}"') :].split('<div class="card"', 1)[0]
        assert html.escape(question_text(row["prompt"])) in card
        if row["format"] == "open":
            assert f"answer (open): <b>{html.escape(row['category'])}</b>" in card
        else:
            assert f"answer: <b>{row['answer']}</b>" in card and card.count('class="correct"') == 1
    assert shown == {"open", "mc4", "mc7", "yesno"}
