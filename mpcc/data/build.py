"""Build MPCC train and eval datasets from a COCO source: select, plan, render, write atomically.

Planning (targets, context, options, difficulty) is cheap and runs in one process over annotation
records. Rendering (decode image, decode mask, paint, encode losslessly) runs in a process pool, one
task per image, in order, so output bytes do not depend on the number of processes. Lazy builds
store no pixels: `mpcc.data.render.load_dataset` renders them on access. The build's record is
mpcc.records.BuildRecord.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import random
import shutil
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

from datasets import Dataset
from tqdm.auto import tqdm

from mpcc.data import prompts
from mpcc.data.answer_options import (
    OPTION_FORMATS,
    Distractors,
    compute_distractors,
    make_items,
    override_distractors,
)
from mpcc.data.coco import CocoSource, SkipReport, check_images, load_coco
from mpcc.data.cooccurrence import CooccurrenceStats, rank_score, save_stats
from mpcc.data.difficulty import LEVELS, difficulty_score, level, level_thresholds
from mpcc.data.masking import MaskSpec, segmentation_to_rle
from mpcc.data.mpcc_eval import EvalItem, read_items
from mpcc.data.render import IMAGE_FORMATS, encode, render_targets, target_seed
from mpcc.data.schema import features
from mpcc.data.selection import DEFAULT_OOD, MPCC_EVAL_SIZE, SelectionConfig, select_targets
from mpcc.data.traces import template_trace
from mpcc.errors import ConfigError, InputError
from mpcc.inputs import file_sha256, read_json, read_text
from mpcc.options import comma_list, option
from mpcc.outputs.checks import check_output
from mpcc.outputs.staging import staged_output
from mpcc.records import BuildRecord, json_values, write_build

logger = logging.getLogger(__name__)

STATS_FILE = "mpcc_stats.json"
SKIPS_FILE = "skipped.jsonl"


class BuildError(InputError):
    """The build as a whole cannot produce a dataset; nothing was written."""


BUILD_FORMATS = ("open", *OPTION_FORMATS)
# The authors trained on open questions only; the eval asks open questions from its mc4 rows.
DEFAULT_FORMATS = {"train": ("open",), "eval": OPTION_FORMATS}


def parse_shard(text: str) -> tuple[int, int]:
    """`3/8` -> (3, 8): shard 3 of 8, numbered from 0 like SLURM array task ids."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"shard must look like INDEX/COUNT (e.g. 3/8), got {text!r}") from None
    if not 0 <= index < count:
        raise ConfigError(f"shard {text!r}: need 0 <= INDEX < COUNT")
    return index, count


def parse_categories(text: str) -> tuple[str, ...]:
    """Comma-separated category names; `none` for none."""
    return () if text.strip().lower() == "none" else comma_list(text)


@dataclass(frozen=True)
class BuildJob:
    """Where a build reads and writes (`mpcc prepare`)."""

    annotations: Path = option(help="COCO instances JSON file")
    images: Path = option(help="directory holding the images' file_name paths")
    out: Path = option(help="output dataset directory (written atomically)")
    overwrite: bool = option(False, "replace a previous mpcc output at --out (never other files)")
    num_proc: int = option(0, "render processes; 0 = all cores (the output is the same)", minimum=0)


@dataclass(frozen=True)
class BuildConfig:
    """What a build makes: its options (`mpcc prepare --help`) and the record in mpcc_build.json."""

    split: str = option(
        help="train: one row per target (the open question unless --formats says otherwise) without the "
        "held-out categories; eval: multiple-choice and yes/no rows with difficulty levels and an OOD flag",
        choices=("train", "eval"),
        positional=True,
    )
    seed: int = option(0, "seed for every random choice", minimum=0)
    mask: MaskSpec = field(default_factory=MaskSpec)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    ood_categories: tuple[str, ...] = option(
        DEFAULT_OOD,
        "comma-separated categories held out of training targets and flagged in_distribution=false in "
        "eval; `none` for no held-out set",
        parse=parse_categories,
    )
    formats: tuple[str, ...] | None = option(
        None,
        f"question formats, comma-separated of {', '.join(BUILD_FORMATS)} (default: "
        f"{','.join(DEFAULT_FORMATS['train'])} for train, {','.join(DEFAULT_FORMATS['eval'])} for eval); "
        "train: each target gets one row in a format drawn among these; eval: one row per format item "
        "(no open: the evaluation asks it from the mc4 rows)",
    )
    max_items: int | None = option(
        MPCC_EVAL_SIZE,
        "eval: hidden objects to keep, split over the three levels (MPCC-Eval's size; train builds keep all)",
        minimum=1,
    )
    balance: bool = option(True, "eval: the same number of items per level (--no-balance: all of each)")
    stats: Path | None = option(
        None,
        "eval: a train build (directory or its mpcc_stats.json): co-occurrence statistics and difficulty "
        "thresholds, so eval levels match training",
    )
    distractors: Path | None = option(
        None,
        "JSON/JSONL rows {ann_id, confusable: [..], irrelevant: [..]} that replace the computed "
        "distractors of multiple-choice and yes/no rows (e.g. a model's guesses)",
    )
    mpcc_eval: Path | None = option(
        None, "eval: the authors' MPCC-Eval JSON: its items, levels and distractors instead of selecting"
    )
    template_traces: bool = option(
        False,
        "train: fill `reasoning` with a template trace built from the row's context (for SFT and prior "
        "sampling without a teacher model)",
    )
    image_format: str = option(
        "png",
        "png / webp: the masked image stored losslessly; lazy: no pixels stored, rendered on access with "
        "mpcc.data.render.load_dataset (needs the original images)",
        choices=IMAGE_FORMATS,
    )
    shard: tuple[int, int] | None = option(
        None,
        "plan over the whole source but render only block I of N of its images (I from 0); join the N "
        "shard builds with `mpcc merge-shards` (launch/slurm/prepare.sbatch runs them as a job array)",
        parse=parse_shard,
        metavar="I/N",
    )

    def __post_init__(self):
        if self.split not in ("train", "eval"):
            raise ConfigError(f"split must be 'train' or 'eval', got {self.split!r}")
        if self.image_format not in IMAGE_FORMATS:
            raise ConfigError(f"image_format must be one of {IMAGE_FORMATS}, got {self.image_format!r}")
        if self.mpcc_eval is not None and self.split != "eval":
            raise ConfigError("an MPCC-Eval file can only define an eval build")
        if self.formats is None:  # frozen: the split's default is recorded like a given value
            object.__setattr__(self, "formats", DEFAULT_FORMATS[self.split])
        unknown = set(self.formats) - set(BUILD_FORMATS)
        if unknown or not self.formats or len(set(self.formats)) != len(self.formats):
            raise ConfigError(
                f"formats must be a non-empty subset of {BUILD_FORMATS} without repeats, got {self.formats}"
            )
        if self.split == "eval" and "open" in self.formats:
            raise ConfigError(
                "eval builds have no `open` format: the evaluation derives each item's open question from "
                "its mc4 row (`mpcc eval --formats open`); build eval with mc4 instead"
            )
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise ConfigError(f"shard must be (index, count) with 0 <= index < count, got {self.shard}")


@dataclass
class Plan:
    """Everything decided before rendering: one entry per target, its rows, and the bookkeeping."""

    rows: dict[int, list[dict]]  # ann_id -> rows (train: one; eval: one per format item)
    targets: list[dict]
    thresholds: tuple[float, float]
    rejected: Counter


def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def image_digest(file_name: str, data: bytes) -> int:
    """One image's share of a build's `images_digest`: its sha256 over name and bytes, as a number."""
    h = hashlib.sha256(file_name.encode())
    h.update(b"\0")
    h.update(data)
    return int.from_bytes(h.digest(), "big")


def digest_sum(digests: Iterable[int]) -> str:
    """The images' digests added up mod 2**256: independent of the order images were rendered in, and
    shard builds' sums add up to the one-job build's (`mpcc merge-shards`)."""
    return f"{sum(digests) % 2**256:064x}"


def _stats_file(path: Path) -> Path:
    return path / STATS_FILE if path.is_dir() else path


def load_stats(path: Path) -> tuple[CooccurrenceStats, tuple[float, float]]:
    """Co-occurrence statistics and difficulty thresholds saved by a train build."""
    file = _stats_file(path)
    try:
        data = read_json(file)
        return CooccurrenceStats.from_json(data), tuple(data["thresholds"])
    except (OSError, ValueError, KeyError) as e:
        raise BuildError(f"{file}: not a readable mpcc stats file ({e})") from e


def load_supplied_distractors(path: Path) -> dict[int, dict]:
    """Rows {ann_id, confusable, irrelevant} from JSON (a list) or JSONL; errors name the line."""
    try:
        text = read_text(path)
    except OSError as e:
        raise BuildError(f"cannot read the distractors file: {e}") from e
    try:
        rows = (
            json.loads(text)
            if path.suffix == ".json"
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as e:
        raise BuildError(f"{path}: malformed JSON at line {e.lineno}: {e.msg}") from e
    supplied = {}
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("ann_id"), int):
            raise BuildError(f"{path}: row {i} needs an integer 'ann_id'")
        for key in ("confusable", "irrelevant"):
            if not isinstance(row.get(key, []), list):
                raise BuildError(f"{path}: row {i} ({row['ann_id']}): {key!r} must be a list of names")
        supplied[row["ann_id"]] = row
    return supplied


def _context(coco, ann: dict) -> tuple[list[dict], set[str]]:
    """Other annotated instances of the image and every category present (target included)."""
    others = [a for a in coco.imgToAnns[ann["image_id"]] if a["id"] != ann["id"]]
    present = {coco.cats[a["category_id"]]["name"] for a in coco.imgToAnns[ann["image_id"]]}
    return others, present


def _mask_column(ann: dict, image: dict) -> dict:
    rle = segmentation_to_rle(ann["segmentation"], image["height"], image["width"])
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _base_row(coco, ann: dict, others: list[dict]) -> dict:
    image = coco.imgs[ann["image_id"]]
    cat = coco.cats[ann["category_id"]]
    return {
        "image_id": image["id"],
        "ann_id": ann["id"],
        "file_name": image["file_name"],
        "width": image["width"],
        "height": image["height"],
        "bbox": [float(v) for v in ann["bbox"]],
        "mask": _mask_column(ann, image),
        "area_frac": ann["area"] / (image["width"] * image["height"]),
        "category": cat["name"],
        "category_id": cat["id"],
        "supercategory": cat["supercategory"],
        "solution": cat["name"],
        "context": sorted({coco.cats[a["category_id"]]["name"] for a in others}),
        "context_ann_ids": sorted(a["id"] for a in others),
    }


def plan(source: CocoSource, config: BuildConfig) -> tuple[Plan, CooccurrenceStats]:
    """Decide every row's content except its pixels: the targets, each one's context, predictability,
    difficulty level and answer options, then its rows in the build's formats."""
    targets, rejected, fixed = _candidate_targets(source, config)
    stats, thresholds, leave_one_out = _statistics(source.coco, config)
    targets = _known_targets(targets, stats, source, rejected)
    scored, distractors = _score(source.coco, targets, stats, leave_one_out, fixed, config)
    thresholds = _assign_levels(scored, thresholds, fixed, config)
    targets, rows = _format_rows(targets, scored, distractors, fixed, config, rejected)
    return Plan(rows, targets, thresholds, rejected), stats


def _candidate_targets(source: CocoSource, config: BuildConfig) -> tuple[list[dict], Counter, dict]:
    """The objects to hide and why others were rejected: the MPCC-Eval file's items (also returned by
    ann_id: they fix levels and distractors) or a selection from the source (train builds leave the
    held-out categories out); those whose image cannot be read go."""
    fixed: dict[int, EvalItem] = {}
    if config.mpcc_eval is not None:
        fixed = {item.ann["id"]: item for item in read_items(config.mpcc_eval, source)}
        targets = sorted((i.ann for i in fixed.values()), key=lambda a: (a["image_id"], a["id"]))
        rejected = Counter()
    else:
        selection = config.selection
        if config.split == "train":
            selection = replace(selection, exclude_categories=frozenset(config.ood_categories))
        targets, rejected = select_targets(source, selection, config.seed)
    good_images = check_images(source, {t["image_id"] for t in targets})
    return [t for t in targets if t["image_id"] in good_images], rejected, fixed


def _statistics(coco, config: BuildConfig) -> tuple[CooccurrenceStats, tuple[float, float] | None, bool]:
    """Co-occurrence statistics, difficulty thresholds and whether to leave each target's own image out
    of them: a train build's (--stats, so eval levels match training), or the source's own, counted
    without the target's image, with thresholds still to derive (None)."""
    if config.stats is not None:
        stats, thresholds = load_stats(config.stats)
        return stats, thresholds, False
    return CooccurrenceStats.from_coco(coco), None, True


def _known_targets(targets: list[dict], stats: CooccurrenceStats, source: CocoSource, rejected: Counter):
    """The targets whose category the statistics know; BuildError when none is left."""
    known = [t for t in targets if source.coco.cats[t["category_id"]]["name"] in stats.index]
    rejected["category_not_in_stats"] += len(targets) - len(known)
    if not known:
        raise BuildError(
            f"{source.annotations_path}: no usable targets (rejected: {dict(rejected)}; "
            f"{source.report.summary()})"
        )
    return known


def _score(
    coco, targets: list[dict], stats: CooccurrenceStats, leave_one_out: bool, fixed: dict, config: BuildConfig
) -> tuple[dict[int, dict], dict[int, Distractors]]:
    """Each target's row (by ann_id) with how predictable its category is from the visible context and
    its difficulty score; its distractors when a format offers options."""
    supplied = load_supplied_distractors(config.distractors) if config.distractors else {}
    needs_distractors = config.formats != ("open",)
    rows: dict[int, dict] = {}
    distractors: dict[int, Distractors] = {}
    for ann in targets:
        others, present = _context(coco, ann)
        row = _base_row(coco, ann, others)
        probs = stats.conditional(
            [c for c in row["context"] if c in stats.index], exclude=present if leave_one_out else ()
        )
        predictability = rank_score(probs, stats.index[row["category"]], range(len(stats.names)))
        row["predictability"] = predictability
        row["difficulty_score"] = difficulty_score(predictability, len(others), row["area_frac"])
        rows[ann["id"]] = row
        if needs_distractors:
            given = _given_distractors(fixed.get(ann["id"]), supplied.get(ann["id"]))
            rng = random.Random(f"{config.seed}:distractors:{ann['id']}")
            d = compute_distractors(probs, stats.names, stats.supercategories, row["category"], present, rng)
            if given is not None:
                d = override_distractors(d, row["category"], given.choice + given.judgement, given.irrelevant)
            distractors[ann["id"]] = d
    return rows, distractors


def _given_distractors(item: EvalItem | None, supplied: dict | None) -> Distractors | None:
    """Distractors that take precedence over the computed ones: the --distractors file's row, else the
    MPCC-Eval item's; None when neither gives any."""
    if supplied is not None:
        return Distractors(tuple(supplied.get("confusable", ())), (), tuple(supplied.get("irrelevant", ())))
    return item.distractors if item is not None else None


def _assign_levels(
    rows: dict[int, dict], thresholds: tuple[float, float] | None, fixed: dict, config: BuildConfig
) -> tuple[float, float]:
    """Give each row its difficulty level: the MPCC-Eval item's, else its score cut at the thresholds
    (derived from these rows when no train build gave them). Returns the thresholds."""
    if thresholds is None:
        thresholds = level_thresholds([r["difficulty_score"] for r in rows.values()])
        if config.split == "eval" and not fixed:
            logger.warning(
                "no --stats given: eval difficulty thresholds come from the eval source itself; "
                "pass the train build to keep levels stable across builds"
            )
    for ann_id, row in rows.items():
        score = row["difficulty_score"]
        row["difficulty"] = fixed[ann_id].level if ann_id in fixed else level(score, thresholds)
    return thresholds


def _format_rows(
    targets: list[dict], scored: dict, distractors: dict, fixed: dict, config: BuildConfig, rejected: Counter
) -> tuple[list[dict], dict[int, list[dict]]]:
    """Each target's rows in the build's formats (train: one; eval: one per format item, for the items
    chosen per level unless MPCC-Eval fixed them); targets left without a row go."""
    if config.split == "train":
        rows = {t["id"]: _train_rows(scored[t["id"]], distractors, config, rejected) for t in targets}
    else:
        if not fixed:
            targets = _choose_eval_items(targets, scored, config, rejected)
        rows = {t["id"]: _eval_rows(scored[t["id"]], distractors[t["id"]], config, rejected) for t in targets}
    targets = [t for t in targets if rows[t["id"]]]
    if not targets:
        raise BuildError(
            f"no target can be asked in the formats {','.join(config.formats)} (rejected: {dict(rejected)})"
        )
    return targets, rows


def _choose_eval_items(targets: list[dict], rows: dict, config: BuildConfig, rejected: Counter) -> list[dict]:
    """Up to max_items items, split evenly over levels; with `balance`, every level gets as many as the
    scarcest one can give."""
    by_level = defaultdict(list)
    for t in targets:
        by_level[rows[t["id"]]["difficulty"]].append(t)
    total = config.max_items if config.max_items is not None else len(targets)
    quota = {lv: total // 3 + (1 if i < total % 3 else 0) for i, lv in enumerate(LEVELS)}
    if config.balance:
        scarcest = min(len(by_level[lv]) for lv in LEVELS)
        quota = {lv: min(q, scarcest) for lv, q in quota.items()}
    chosen = []
    for lv in LEVELS:
        pool = by_level[lv]
        keep = random.Random(f"{config.seed}:level:{lv}").sample(pool, min(quota[lv], len(pool)))
        rejected["eval_quota"] += len(pool) - len(keep)
        chosen += keep
    if not chosen:
        raise BuildError(
            f"no eval items left after balancing levels (per level: "
            f"{ {lv: len(by_level[lv]) for lv in LEVELS} }); try --no-balance"
        )
    return sorted(chosen, key=lambda t: (t["image_id"], t["id"]))


def _train_rows(row: dict, distractors: dict, config: BuildConfig, rejected: Counter) -> list[dict]:
    """The target's one row (traces are keyed by ann_id), in a format drawn uniformly among the requested
    ones it has distractors for; [] when it has none. Options are shuffled as in an eval build."""
    rng = random.Random(f"{config.seed}:format:{row['ann_id']}")
    items = {fmt: _items(row, distractors.get(row["ann_id"]), fmt, config.seed) for fmt in config.formats}
    possible = [fmt for fmt in config.formats if items[fmt]]
    if not possible:
        rejected[f"too_few_distractors_{'_or_'.join(config.formats)}"] += 1
        return []
    fmt = rng.choice(possible)
    item = rng.choice(items[fmt])  # yesno: the answer's row or one of the 4 negatives'
    return [
        {
            **row,
            "format": fmt,
            "options": item["options"],
            "answer": item["answer"],
            "candidate": item["candidate"],
            "prompt": prompts.conversation(_question(fmt, config.mask.fill, item)),
            "reasoning": (
                template_trace(row["context"], row["solution"], seed=target_seed(config.seed, row["ann_id"]))
                if config.template_traces
                else None
            ),
        }
    ]


def _items(row: dict, d: Distractors | None, fmt: str, seed: int) -> list[dict]:
    """A target's items of one format: the open question's, or make_items' ([] without enough
    distractors), shuffled with the same seed in train and eval builds."""
    if fmt == "open":
        return [{"options": [], "answer": row["solution"], "candidate": ""}]
    return make_items(row["category"], d, fmt, random.Random(f"{seed}:{fmt}:{row['ann_id']}"))


def _question(fmt: str, fill: str, item: dict) -> str:
    """The question of one format item, as the model sees it."""
    if fmt == "open":
        return prompts.open_question(fill)
    if fmt == "yesno":
        return prompts.yesno_question(fill, item["candidate"])
    return prompts.choice_question(fill, item["options"])


def _eval_rows(row: dict, d: Distractors, config: BuildConfig, rejected: Counter) -> list[dict]:
    out = []
    for fmt in config.formats:
        items = _items(row, d, fmt, config.seed)
        if not items:
            rejected[f"too_few_distractors_{fmt}"] += 1
        for item in items:
            out.append(
                {
                    **row,
                    **item,
                    "format": fmt,
                    "prompt": prompts.conversation(_question(fmt, config.mask.fill, item)),
                    "item_id": f"{row['image_id']}-{row['ann_id']}",
                    "in_distribution": row["category"] not in config.ood_categories,
                    "distractors": {
                        "choice": list(d.choice),
                        "judgement": list(d.judgement),
                        "irrelevant": list(d.irrelevant),
                    },
                }
            )
    return out


def shard_plan(plan_: Plan, index: int, count: int) -> Plan:
    """The part of a whole-source plan that shard `index` of `count` renders: a contiguous block of its
    images in image-id order (the order rows are written), so shards concatenated by index are the
    one-job build. Everything decided over the whole source (statistics, thresholds, eval items) stays."""
    images = sorted({t["image_id"] for t in plan_.targets})
    block = set(images[index * len(images) // count : (index + 1) * len(images) // count])
    if not block:
        raise BuildError(
            f"shard {index}/{count} holds no images: only {len(images)} images have targets; use fewer shards"
        )
    targets = [t for t in plan_.targets if t["image_id"] in block]
    return Plan({t["id"]: plan_.rows[t["id"]] for t in targets}, targets, plan_.thresholds, plan_.rejected)


def _render_image(task: tuple) -> tuple[int, dict[int, bytes] | str, int | None]:
    """Worker: one image file, all its targets. Encoded bytes per ann_id and the file's image_digest,
    or the error as text."""
    image_id, file_name, path, targets, spec, seed, image_format = task
    try:
        data = Path(path).read_bytes()
        masked = render_targets(io.BytesIO(data), targets, spec, seed)
        encoded = {ann_id: encode(image, image_format) for ann_id, image in masked.items()}
        return image_id, encoded, image_digest(file_name, data)
    except Exception as e:  # a file that decodes badly must cost one image, not the build
        return image_id, f"{path}: {type(e).__name__}: {e}", None


def _render_tasks(source: CocoSource, plan_: Plan, config: BuildConfig):
    by_image = defaultdict(list)
    for t in plan_.targets:
        by_image[t["image_id"]].append((t["id"], plan_.rows[t["id"]][0]["mask"], t["bbox"]))
    for image_id in sorted(by_image):
        yield (
            image_id,
            source.coco.imgs[image_id]["file_name"],
            str(source.image_path(image_id)),
            by_image[image_id],
            config.mask,
            config.seed,
            config.image_format,
        )


@dataclass
class _Tally:
    """What the rows' generator counts: rows per level and the image_digest of each image they show."""

    per_level: Counter = field(default_factory=Counter)
    images: list[int] = field(default_factory=list)


def _rows_with_images(
    source: CocoSource, plan_: Plan, config: BuildConfig, report: SkipReport, tally: _Tally, pool, procs: int
):
    """Rows in plan order with their encoded image; lazy builds store none (rendered on access) but
    read the files for their digests."""
    tasks = list(_render_tasks(source, plan_, config))
    if config.image_format == "lazy":
        for _, file_name, path, targets, *_ in tasks:
            tally.images.append(image_digest(file_name, Path(path).read_bytes()))
            for ann_id, *_ in targets:
                for row in plan_.rows[ann_id]:
                    tally.per_level[row["difficulty"]] += 1
                    yield {**row, "image": None}
        return
    try:
        results = pool.map(_render_image, tasks, chunksize=max(1, min(16, len(tasks) // (procs * 8) or 1)))
        for (image_id, _, path, targets, *_), (_, result, digest) in tqdm(
            zip(tasks, results), total=len(tasks), desc=f"render {config.split}", unit="img"
        ):
            if isinstance(result, str):
                name = f"image {image_id} ({Path(path).name})"
                report.add(source.annotations_path, name, "undecodable_image", result)
                continue
            tally.images.append(digest)
            for ann_id, *_ in targets:
                for row in plan_.rows[ann_id]:
                    tally.per_level[row["difficulty"]] += 1
                    yield {**row, "image": {"bytes": result[ann_id], "path": None}}
    except BrokenProcessPool as e:
        raise BuildError(
            f"a render process died ({e}): killed or out of memory? From a script, start the build "
            'under `if __name__ == "__main__":` (its processes are spawned and import the script); '
            "nothing was written"
        ) from e


@contextlib.contextmanager
def _render_pool(procs: int):
    """The render processes, ending with the build however it ends. An executor, not
    multiprocessing.Pool: a worker that dies (killed, out of memory, or a script without
    `if __name__ == "__main__":` whose spawned children rerun it) breaks the pool with an error, where a
    Pool replaces the worker and waits forever for its lost results. Each worker exits once the build's
    process is gone (a SIGKILL or an OOM kill runs no cleanup; multiprocessing's resource tracker then
    exits too), and SIGTERM (kill, scancel) ends the build as an error does: pool shut down, nothing
    left beside --out."""
    with _sigterm_exits():
        if procs <= 1:
            yield _InProcess()
            return
        context = get_context("spawn")
        pool = ProcessPoolExecutor(
            procs, mp_context=context, initializer=_watch_parent, initargs=(os.getpid(),)
        )
        try:
            yield pool
        finally:
            pool.shutdown(cancel_futures=True)


def _watch_parent(parent: int) -> None:
    """Render process initializer: exit as soon as the build's process (`parent`) is gone."""

    def watch():
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


@contextlib.contextmanager
def _sigterm_exits():
    """SIGTERM raises SystemExit(143) in the build (only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _InProcess:
    """The executor interface for num_proc=1: same code path, no subprocesses."""

    @staticmethod
    def map(fn, items, chunksize=1):
        return map(fn, items)

    @staticmethod
    def shutdown(cancel_futures=False):
        pass


@contextlib.contextmanager
def _build_errors(out: Path):
    """What `datasets` wraps in a generic DatasetGenerationError, as one line: a full disk while writing
    (naming the output), or the BuildError the rows' generator raised. The staging directory is removed
    with everything written into it."""
    try:
        yield
    except Exception as e:
        cause, seen = e, set()
        while cause is not None and not (isinstance(cause, OSError) and cause.errno == errno.ENOSPC):
            if isinstance(cause, BuildError) and cause is not e:  # raised in the rows' generator
                raise cause from cause.__cause__
            seen.add(id(cause))
            cause = cause.__cause__ or cause.__context__
            cause = None if id(cause) in seen else cause
        if cause is None:
            raise
        raise BuildError(f"no space left on device writing {out} ({cause}); nothing was written") from e


@dataclass
class BuildResult:
    path: Path
    num_rows: int
    rows_per_level: dict[str, int]
    rejected: dict[str, int]
    skipped: dict[str, int]
    thresholds: tuple[float, float]


def build(
    annotations: str | Path,
    images_dir: str | Path,
    out: str | Path,
    config: BuildConfig,
    overwrite: bool = False,
    num_proc: int = 0,
) -> BuildResult:
    """Write a `datasets` dataset to `out` (save_to_disk) with its build record, stats and skip report.

    Nothing appears at `out` unless the whole build succeeds. `num_proc` (0 = all cores) changes
    speed only: the output bytes are the same for any value.
    """
    out = Path(out)
    check_output(
        out,
        overwrite,
        error=BuildError,
        inputs=(annotations, images_dir, config.stats, config.distractors, config.mpcc_eval),
    )
    source = load_coco(annotations, images_dir)
    the_plan, stats = plan(source, config)
    plan_skips = len(source.report.skips)  # found while planning the whole source: the same in every shard
    if config.shard is not None:
        the_plan = shard_plan(the_plan, *config.shard)
    input_sha256 = _input_digests(source, config)
    with staged_output(out, overwrite) as staged:
        tally = _write_rows(source, the_plan, config, staged, out, num_proc, input_sha256)
        save_stats(stats, {"thresholds": list(the_plan.thresholds)}, staged / STATS_FILE)
        source.report.write_jsonl(staged / SKIPS_FILE)
        result = BuildResult(
            out,
            sum(tally.per_level.values()),
            dict(sorted(tally.per_level.items())),
            dict(sorted(the_plan.rejected.items())),
            source.report.counts(),
            the_plan.thresholds,
        )
        record = BuildRecord(
            config=json_values(asdict(config)),
            annotations=str(source.annotations_path.resolve()),
            images_dir=str(Path(images_dir).resolve()),
            input_sha256=input_sha256,
            images_digest=digest_sum(tally.images),
            prompt_version=prompts.PROMPT_VERSION,
            num_rows=result.num_rows,
            rows_per_level=result.rows_per_level,
            rejected=result.rejected,
            skipped=result.skipped,
            thresholds=list(the_plan.thresholds),
            plan_skips=plan_skips if config.shard is not None else None,
        )
        write_build(staged, record)
    logger.info("wrote %d rows to %s; %s", result.num_rows, out, source.report.summary())
    return result


def _input_digests(source: CocoSource, config: BuildConfig) -> dict[str, str]:
    """sha256 of every file the build read, by its role: the record names them, and the dataset's cache
    fingerprint depends on them."""
    inputs = {"annotations": source.annotations_path, "distractors": config.distractors}
    inputs.update(mpcc_eval=config.mpcc_eval, stats=config.stats and _stats_file(config.stats))
    return {name: file_sha256(path) for name, path in inputs.items() if path is not None}


def _write_rows(
    source: CocoSource,
    the_plan: Plan,
    config: BuildConfig,
    staged: Path,
    out: Path,
    num_proc: int,
    input_sha256: dict[str, str],
) -> _Tally:
    """Render the planned rows (in worker processes unless lazy) into the dataset saved at `staged`;
    the tally of what was written."""
    tally = _Tally()
    procs = 1 if config.image_format == "lazy" else num_proc or os.cpu_count() or 1
    with _build_errors(out), _render_pool(procs) as pool:
        dataset = Dataset.from_generator(
            lambda: _rows_with_images(source, the_plan, config, source.report, tally, pool, procs),
            features=features(config.split),
            cache_dir=str(staged / ".cache"),  # in the staging directory: a failure removes it too
            fingerprint=_fingerprint(asdict(config), input_sha256, "v1"),
        )
        if len(dataset) == 0:
            raise BuildError(f"no samples could be rendered; {source.report.summary()}")
        dataset.save_to_disk(str(staged))
    del dataset
    shutil.rmtree(staged / ".cache")
    return tally
