"""Sharded builds: `mpcc prepare ... --shard i/n` on n jobs, then `mpcc merge-shards` into one build.

Every shard plans the whole source (target selection, co-occurrence statistics, difficulty thresholds,
eval items: seconds, about 20 s for COCO train2017) and renders only its block of images, the part
that takes hours. So the shards share one set of statistics and thresholds, and the merged dataset,
statistics and build record are those a single job would have written. Skips found while planning
appear in every shard and are kept once.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from datasets import concatenate_datasets, load_from_disk

from mpcc.data.build import SKIPS_FILE, STATS_FILE, BuildError, BuildResult, digest_sum
from mpcc.inputs import read_bytes, read_text
from mpcc.options import option
from mpcc.outputs.checks import check_output
from mpcc.outputs.staging import staged_output
from mpcc.records import BuildRecord, read_build, write_build

logger = logging.getLogger(__name__)

# Record keys that differ between the shards of one build.
PER_SHARD = ("num_rows", "rows_per_level", "skipped", "plan_skips", "images_digest")


def _common(record: BuildRecord) -> dict:
    """What every shard of one build records alike (its shard aside)."""
    common = {k: v for k, v in record.to_json().items() if k not in PER_SHARD}
    common["config"] = {**record.config, "shard": None}
    return common


def _read_shards(shards: Sequence[Path]) -> list[tuple[Path, BuildRecord]]:
    """The shard builds in index order, checked to be all the shards of one build."""
    by_index: dict[int, tuple[Path, BuildRecord]] = {}
    for path in map(Path, shards):
        record = read_build(path)
        shard = record.config.get("shard")
        if shard is None:
            raise BuildError(f"{path}: not a shard build (made without --shard)")
        if record.images_digest is None:
            raise BuildError(f"{path}: built by an mpcc without images_digest; build the shards again")
        index, count = shard
        if count != len(shards):
            raise BuildError(f"{path}: shard {index}/{count}, but {len(shards)} shard builds were given")
        if index in by_index:
            raise BuildError(f"{path} and {by_index[index][0]} are both shard {index}/{count}")
        by_index[index] = (path, record)
    ordered = [by_index[i] for i in sorted(by_index)]
    first_path, first = ordered[0]
    stats = read_bytes(first_path / STATS_FILE)
    for path, record in ordered[1:]:
        if _common(record) != _common(first):
            keys = sorted(k for k in _common(record) if _common(record)[k] != _common(first).get(k))
            raise BuildError(f"{path} and {first_path} are shards of different builds (differing: {keys})")
        if read_bytes(path / STATS_FILE) != stats:
            raise BuildError(f"{path}: statistics differ from {first_path}'s")
    return ordered


@dataclass(frozen=True)
class MergeJob:
    """`mpcc merge-shards`: all N shard builds of one `mpcc prepare` run (in shard order) into the build a
    single job would have written: rows, statistics, skip report and build record."""

    shards: tuple[Path, ...] = option(help="the N shard build directories, in any order", positional=True)
    out: Path = option(help="output dataset directory (written atomically)")
    overwrite: bool = option(False, "replace a previous mpcc output at --out (never other files)")


def merge_shards(
    shards: Sequence[str | Path], out: str | Path, overwrite: bool = MergeJob.overwrite
) -> BuildResult:
    """Concatenate shard builds into `out` (written atomically): the build one job would have made."""
    out = Path(out)
    if not shards:
        raise BuildError("no shard builds given")
    check_output(out, overwrite, error=BuildError, inputs=shards)
    ordered = _read_shards(shards)
    first_path, first = ordered[0]
    skips = read_text(first_path / SKIPS_FILE).splitlines()[: first.plan_skips]
    for path, record in ordered:
        skips += read_text(path / SKIPS_FILE).splitlines()[record.plan_skips :]
    per_level = Counter()
    for _, record in ordered:
        per_level.update(record.rows_per_level)
    record = replace(
        first,
        config={**first.config, "shard": None},
        num_rows=sum(r.num_rows for _, r in ordered),
        rows_per_level=dict(sorted(per_level.items())),
        skipped=dict(sorted(Counter(json.loads(line)["reason"] for line in skips).items())),
        images_digest=digest_sum(int(r.images_digest, 16) for _, r in ordered),
        plan_skips=None,
        merged_shards=len(ordered),
    )
    with staged_output(out, overwrite) as staged:
        dataset = concatenate_datasets([load_from_disk(str(path)) for path, _ in ordered])
        if len(dataset) != record.num_rows:
            raise BuildError(f"the shards hold {len(dataset)} rows, their records say {record.num_rows}")
        dataset.save_to_disk(str(staged))
        del dataset
        shutil.copyfile(first_path / STATS_FILE, staged / STATS_FILE)
        (staged / SKIPS_FILE).write_text("".join(f"{line}\n" for line in skips), encoding="utf-8")
        write_build(staged, record)
    logger.info("merged %d shards into %s: %d rows", len(ordered), out, record.num_rows)
    return BuildResult(
        out, record.num_rows, record.rows_per_level, record.rejected, record.skipped, tuple(record.thresholds)
    )
