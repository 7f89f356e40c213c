"""Data pipeline benchmark: indexing + target selection at COCO-train scale, and rendering throughput.

Prints a markdown table and writes JSON. Each phase runs in a fresh subprocess so its peak memory
(max RSS) is its own. Rendering is measured as a whole `build` (plan, render, PNG, Arrow write) and
compared, in the same run and on the same targets, with a naive baseline that only renders: one
process, `COCO.annToMask` and PIL per sample, the image decoded for every sample.

    python benchmarks/data_pipeline.py --out benchmarks/results/data_pipeline.json
"""

from __future__ import annotations

import argparse
import io
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


def phase_render(annotations: str, images: str, procs: int) -> dict:
    """mpcc end to end: a full `mpcc prepare train` build (plan, render in a pool, PNG, Arrow, rename)."""
    import datasets

    from mpcc.data.build import BuildConfig, build
    from mpcc.data.selection import SelectionConfig

    datasets.disable_progress_bars()
    config = BuildConfig("train", selection=SelectionConfig(**SELECTION), ood_categories=())
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = build(annotations, images, Path(tmp) / "out", config, num_proc=procs)
        elapsed = time.perf_counter() - start
    return {
        "samples": result.num_rows,
        "seconds": elapsed,
        "samples_per_s": result.num_rows / elapsed,
        "peak_rss_mb": _peak_rss_mb(),
    }


def phase_naive(annotations: str, images: str) -> dict:
    """Baseline on the same targets: per sample, decode the image, annToMask, paste black through
    the mask, save PNG; one process."""
    from PIL import Image

    from mpcc.data.coco import load_coco
    from mpcc.data.selection import SelectionConfig, select_targets

    source = load_coco(annotations, images)
    targets, _ = select_targets(source, SelectionConfig(**SELECTION))
    coco = source.coco
    start = time.perf_counter()
    for ann in targets:
        image = Image.open(source.image_path(ann["image_id"])).convert("RGB")
        mask = Image.fromarray(coco.annToMask(ann) * 255)
        image.paste((0, 0, 0), mask=mask)
        image.save(io.BytesIO(), format="PNG")
    elapsed = time.perf_counter() - start
    return {
        "samples": len(targets),
        "seconds": elapsed,
        "samples_per_s": len(targets) / elapsed,
        "peak_rss_mb": _peak_rss_mb(),
    }


PHASES = {"index": phase_index, "render": phase_render, "naive": phase_naive}


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

    def med(runs, key):
        return statistics.median(r[key] for r in runs)

    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "index": index,
        "render": {
            "mpcc": render,
            "naive": naive,
            "procs": a.procs,
            "mpcc_samples_per_s": med(render, "samples_per_s"),
            "naive_samples_per_s": med(naive, "samples_per_s"),
            "speedup": med(render, "samples_per_s") / med(naive, "samples_per_s"),
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
        ("samples per build", f"{render[0]['samples']:,}"),
        (
            f"mpcc full build, {a.procs} procs (median of {a.repeats})",
            f"{r['mpcc_samples_per_s']:.0f} samples/s",
        ),
        (f"naive render, 1 proc (median of {a.repeats})", f"{r['naive_samples_per_s']:.0f} samples/s"),
        ("speed-up", f"{r['speedup']:.1f}x"),
        (
            "peak RSS, mpcc main process / naive",
            f"{med(render, 'peak_rss_mb'):.0f} / {med(naive, 'peak_rss_mb'):.0f} MB",
        ),
    ]
    print("| measurement | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
