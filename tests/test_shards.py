"""Sharded builds (`mpcc prepare --shard I/N` + `mpcc merge-shards`) equal the one-job build: rows,
statistics, skip report and record, with broken images in the source and in either split."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
from datasets import load_from_disk

from mpcc.cli import main
from mpcc.data.build import SKIPS_FILE, STATS_FILE, BuildConfig, BuildError, build, parse_shard
from mpcc.data.shards import merge_shards
from mpcc.records import BUILD_FILE


def _assert_same_build(merged, whole, shards: int) -> None:
    assert load_from_disk(str(merged)).data.table.equals(load_from_disk(str(whole)).data.table)
    for name in (STATS_FILE, SKIPS_FILE):
        assert (merged / name).read_bytes() == (whole / name).read_bytes(), name
    record = json.loads((merged / BUILD_FILE).read_text())
    assert record.pop("merged_shards") == shards
    assert record == json.loads((whole / BUILD_FILE).read_text())


@pytest.fixture(scope="module")
def damaged(tinycoco, tmp_path_factory, tiny_builds):
    """tinycoco with one image missing (skipped while planning, so reported by every shard) and two
    truncated ones (skipped while rendering, by the shard that renders them), far apart in id order."""
    images = tmp_path_factory.mktemp("damaged") / "images"
    shutil.copytree(tinycoco / "images", images)
    coco = json.loads((tinycoco / "instances.json").read_text())
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    ids = sorted(set(load_from_disk(str(tiny_builds["train"]))["image_id"]))
    (images / names[ids[5]]).unlink()
    for image_id in (ids[1], ids[-2]):
        raw = (images / names[image_id]).read_bytes()
        (images / names[image_id]).write_bytes(raw[: len(raw) // 3])
    return images


def test_three_train_shards_merge_into_the_one_job_build(tinycoco, damaged, tmp_path):
    ann = tinycoco / "instances.json"
    config = BuildConfig("train", template_traces=True, formats=("open", "mc4", "mc7", "yesno"))
    whole = build(ann, damaged, tmp_path / "whole", config, num_proc=1)
    assert set(whole.skipped) == {"missing_image", "undecodable_image"}
    shards = [build(ann, damaged, tmp_path / f"shard{i}", replace(config, shard=(i, 3))) for i in range(3)]
    assert all(0 < s.num_rows < whole.num_rows for s in shards)
    assert sum(s.num_rows for s in shards) == whole.num_rows
    assert all(s.thresholds == whole.thresholds for s in shards)  # whole-source statistics everywhere
    merged = merge_shards([tmp_path / f"shard{i}" for i in (2, 0, 1)], tmp_path / "merged")  # any order
    assert (merged.num_rows, merged.rows_per_level, merged.skipped) == (
        whole.num_rows,
        whole.rows_per_level,
        whole.skipped,
    )
    _assert_same_build(tmp_path / "merged", tmp_path / "whole", 3)


def test_eval_shards_through_the_cli(tinycoco, tiny_builds, tmp_path, capsys):
    """Eval items are chosen and balanced over the whole source before the images are split."""
    common = ["prepare", "eval", "--annotations", str(tinycoco / "instances.json")]
    common += ["--images", str(tinycoco / "images"), "--stats", str(tiny_builds["train"])]
    common += ["--image-format", "lazy", "--num-proc", "1"]
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0
    for i in range(2):
        assert main([*common, "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/2"]) == 0
    shards = [str(tmp_path / "s1"), str(tmp_path / "s0")]
    assert main(["merge-shards", *shards, "--out", str(tmp_path / "merged")]) == 0
    assert "from 2 shards" in capsys.readouterr().out
    _assert_same_build(tmp_path / "merged", tmp_path / "whole", 2)


def test_bad_shards_are_refused_by_name(tinycoco, tiny_builds, tmp_path, capsys):
    ann, images = tinycoco / "instances.json", tinycoco / "images"
    lazy = {"image_format": "lazy"}
    for i in range(2):
        build(ann, images, tmp_path / f"a{i}", BuildConfig("train", shard=(i, 2), **lazy), num_proc=1)
    build(ann, images, tmp_path / "b1", BuildConfig("train", seed=1, shard=(1, 2), **lazy), num_proc=1)
    with pytest.raises(BuildError, match="shard 0/2, but 1 shard builds were given"):
        merge_shards([tmp_path / "a0"], tmp_path / "out")
    with pytest.raises(BuildError, match="are both shard 1/2"):
        merge_shards([tmp_path / "a1", tmp_path / "a1"], tmp_path / "out")
    with pytest.raises(
        BuildError, match=r"shards of different builds \(differing: \['config', 'thresholds'\]\)"
    ):
        merge_shards([tmp_path / "a0", tmp_path / "b1"], tmp_path / "out")
    with pytest.raises(BuildError, match="not a shard build"):
        merge_shards([tiny_builds["train"]], tmp_path / "out")
    with pytest.raises(BuildError, match="shard 1/1000 holds no images: only 3[0-9] images have targets"):
        build(ann, images, tmp_path / "c", BuildConfig("train", shard=(1, 1000), **lazy), num_proc=1)
    assert not (tmp_path / "out").exists() and not (tmp_path / "c").exists()
    for text in ("3", "3/2", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(text)
    assert parse_shard("3/8") == (3, 8)
    argv = [
        "prepare",
        "train",
        "--annotations",
        str(ann),
        "--images",
        str(images),
        "--out",
        str(tmp_path / "d"),
    ]
    assert main([*argv, "--shard", "2/2"]) == 2
    assert "mpcc prepare: error: shard '2/2': need 0 <= INDEX < COUNT" in capsys.readouterr().err
