"""How the difficulty levels separate on a COCO-format source: a markdown table per level.

python benchmarks/difficulty_levels.py ../shared/data/tinycoco/{instances.json,images}
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import datasets
import numpy as np

from mpcc.data.build import BuildConfig, build
from mpcc.data.difficulty import LEVELS
from mpcc.data.render import load_dataset
from mpcc.reports.tables import markdown_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("annotations", type=Path)
    p.add_argument("images", type=Path)
    a = p.parse_args()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        build(a.annotations, a.images, Path(tmp) / "train", BuildConfig("train", image_format="lazy"))
        columns = ["difficulty", "difficulty_score", "predictability", "context_ann_ids", "area_frac"]
        rows = load_dataset(Path(tmp) / "train").select_columns(columns).to_list()
    table = []
    for lv in LEVELS:
        r = [x for x in rows if x["difficulty"] == lv]
        score = [x["difficulty_score"] for x in r]
        table.append(
            (
                lv,
                len(r),
                f"{min(score):.3f}-{max(score):.3f}",
                f"{np.mean([x['predictability'] for x in r]):.2f}",
                f"{np.mean([len(x['context_ann_ids']) for x in r]):.1f}",
                f"{100 * np.mean([x['area_frac'] for x in r]):.1f}",
            )
        )
    header = ("level", "targets", "difficulty score (min-max)", "predictability (mean)")
    print("\n".join(markdown_table((*header, "other instances (mean)", "area % (mean)"), table)))


if __name__ == "__main__":
    main()
