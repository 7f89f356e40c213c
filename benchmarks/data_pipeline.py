"""Data pipeline benchmark: indexing + target selection at COCO-train scale, and rendering throughput.

Prints a markdown table and writes JSON; every figure is the median of --repeats runs, each phase in
a fresh subprocess (so peak memory is its own). Rendering: rows of a lazy build rendered on access
(as training reads them) in --procs processes, against a naive baseline on the same targets in the
same run (one process; per sample decode the image, `COCO.annToMask`, paste black with PIL). Whole
builds (plan, render, lossless encode, Arrow write) are timed for each image format.

    python benchmarks/data_pipeline.py --out benchmarks/results/data_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_index(annotations: str) -> dict:
    """load_coco (parse + validate + pycocotools index) and target selection, timed together."""
    from mpcc.data.coco import load_coco
    from mpcc.data.selection import SelectionConfig, select_targets

    start = time.perf_counter()
    source = load_coco(annotations)
    loaded = time.perf_counter()
    targets, _ = select_targets(source, SelectionConfig())
    done = time.perf_counter()
    return {
        "images": len(source.coco.imgs),
        "instances": len(source.coco.anns),
        "targets": len(targets),
        "load_s": loaded - start,
        "select_s": done - loaded,
        "total_s": done - start,
        "peak_rss_mb": _peak_rss_mb(),
    }


SELECTION = {"max_per_image": 100, "min_context": 1}


def _build(annotations: str, images: str, out: Path, image_format: str, procs: int):
    import datasets

    from mpcc.data.build import BuildConfig, build
    from mpcc.data.selection import SelectionConfig

    datasets.disable_progress_bars()
    config = BuildConfig(
        "train", selection=SelectionConfig(**SELECTION), ood_categories=(), image_format=image_format
    )
    return build(annotations, images, out, config, num_proc=procs)


def phase_build(annotations: str, images: str, image_format: str, procs: int) -> dict:
    """A whole `mpcc prepare train` (plan, render in a pool, lossless encode, Arrow write, rename)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = _build(annotations, images, Path(tmp) / "out", image_format, procs)
        elapsed = time.perf_counter() - start
    return {
        "samples": result.num_rows,
        "seconds": elapsed,
        "samples_per_s": result.num_rows / elapsed,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _render_shard(args: tuple[str, int, int]) -> int:
    from mpcc.data.render import load_dataset

    path, start, stop = args
    dataset = load_dataset(path)
    return sum(dataset[i]["image"].size[0] > 0 for i in range(start, stop))


def phase_render(annotations: str, images: str, procs: int) -> dict:
    """Rendering as training reads it: a lazy build's rows rendered on access, in `procs` processes."""
    from multiprocessing import get_context

    with tempfile.TemporaryDirectory() as tmp:
        result = _build(annotations, images, Path(tmp) / "lazy", "lazy", 1)
        n = result.num_rows
        bounds = [round(i * n / procs) for i in range(procs + 1)]
        shards = [(str(result.path), bounds[i], bounds[i + 1]) for i in range(procs)]
        with get_context("spawn").Pool(procs) as pool:
            pool.map(_render_shard, [(str(result.path), 0, 1)] * procs)  # start-up and imports, not timed
            start = time.perf_counter()
            rendered = sum(pool.map(_render_shard, shards))
            elapsed = time.perf_counter() - start
    return {
        "samples": rendered,
        "seconds": elapsed,
        "samples_per_s": rendered / elapsed,
        "peak_rss_mb": _peak_rss_mb(),
    }


def phase_naive(annotations: str, images: str) -> dict:
    """Baseline on the same targets, one process: per sample, decode the image, `annToMask`, paste
    black through the mask with PIL."""
    from PIL import Image

    from mpcc.data.coco import load_coco
    from mpcc.data.selection import SelectionConfig, select_targets

    source = load_coco(annotations, images)
    targets, _ = select_targets(source, SelectionConfig(**SELECTION))
    coco = source.coco
    start = time.perf_counter()
    for ann in targets:
        image = Image.open(source.image_path(ann["image_id"])).convert("RGB")
        image.paste((0, 0, 0), mask=Image.fromarray(coco.annToMask(ann) * 255))
    elapsed = time.perf_counter() - start
    return {
        "samples": len(targets),
        "seconds": elapsed,
        "samples_per_s": len(targets) / elapsed,
        "peak_rss_mb": _peak_rss_mb(),
    }


PHASES = {"index": phase_index, "build": phase_build, "render": phase_render, "naive": phase_naive}


def _run_phase(name: str, *args) -> dict:
    """One phase in a fresh interpreter, so its max RSS and caches are its own."""
    out = subprocess.run(
        [sys.executable, __file__, "--phase", name, *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/data_pipeline.json"))
    p.add_argument("--index-images", type=int, default=118_000, help="synthetic annotation file size")
    p.add_argument("--render-images", type=int, default=150, help="synthetic 640x480 scenes to render from")
    p.add_argument("--repeats", type=int, default=3, help="render measurements per method (median reported)")
    p.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="render processes")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.phase:
        fn = PHASES[a.phase]
        args = [int(x) if x.isdigit() else x for x in a.args]
        print(json.dumps(fn(*args)))
        return

    from mpcc.data.synthetic import generate_annotations, generate_scenes, write_annotations

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "train_sized.json"
        write_annotations(generate_annotations(a.index_images, seed=0), big)
        index = _run_phase("index", big)
        big.unlink()
        scenes = generate_scenes(
            Path(tmp) / "scenes", num_images=a.render_images, seed=0, image_size=(640, 480)
        )
        images = scenes.parent / "images"
        render = [_run_phase("render", scenes, images, a.procs) for _ in range(a.repeats)]
        naive = [_run_phase("naive", scenes, images) for _ in range(a.repeats)]
        builds = {
            fmt: [_run_phase("build", scenes, images, fmt, a.procs) for _ in range(a.repeats)]
            for fmt in ("png", "webp", "lazy")
        }

    def med(runs, key):
        return statistics.median(r[key] for r in runs)

    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "command": " ".join(["python", *sys.argv]),
        "index": index,
        "render": {
            "mpcc": render,
            "naive": naive,
            "procs": a.procs,
            "mpcc_samples_per_s": med(render, "samples_per_s"),
            "naive_samples_per_s": med(naive, "samples_per_s"),
            "speedup": med(render, "samples_per_s") / med(naive, "samples_per_s"),
        },
        "build": {
            fmt: {"runs": runs, "samples_per_s": med(runs, "samples_per_s")} for fmt, runs in builds.items()
        },
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    r = result["render"]
    rows = [
        (
            "index + select: images / instances / targets",
            f"{index['images']:,} / {index['instances']:,} / {index['targets']:,}",
        ),
        (
            f"index + select: seconds (load {index['load_s']:.1f} + select {index['select_s']:.1f})",
            f"{index['total_s']:.1f}",
        ),
        ("index + select: peak RSS", f"{index['peak_rss_mb']:,.0f} MB"),
        ("640x480 samples rendered per run", f"{render[0]['samples']:,}"),
        (f"render, mpcc lazy access, {a.procs} procs", f"{r['mpcc_samples_per_s']:.0f} samples/s"),
        ("render, naive annToMask + PIL, 1 proc", f"{r['naive_samples_per_s']:.0f} samples/s"),
        ("render speed-up", f"{r['speedup']:.1f}x"),
    ] + [
        (f"full build, image_format={fmt}, {a.procs} procs", f"{b['samples_per_s']:.0f} samples/s")
        for fmt, b in result["build"].items()
    ]
    from mpcc.reports.tables import markdown_table  # here: the phases above measure mpcc's imports

    print("\n".join(markdown_table(("measurement", "value"), rows)))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
