"""How far the synthetic scenes' own rules can take a reader: accuracy of rule-based classifiers on an eval
build, per format, from what the scene generator knows (no model). The ceiling a trained model can reach,
and which cue carries the answer:

- scene: P(category | scene type), the scene read off the background;
- shape: the hidden category's outline kind (what the default segmentation mask shows), weighted by how
  often each category occurs in the train scenes;
- scene + shape: both;
- context counts: co-occurrence counts of the visible objects' categories in the train scenes.

Multiple-choice options pick, from the absent categories, the ones the visible context makes most
plausible (mpcc.data.answer_options): they mostly come from the same scene, so context alone can rule
out only the irrelevant option. Run on a demo work directory (its scenes and eval build):

    python benchmarks/scene_ceiling.py runs/demo --out benchmarks/results/scene_ceiling.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from mpcc.data import synthetic
from mpcc.data.answer_options import LETTERS
from mpcc.data.coco_categories import COCO_CATEGORIES
from mpcc.data.render import load_dataset
from mpcc.reports.tables import fmt, markdown_table

NAMES = [c["name"] for c in COCO_CATEGORIES]
FORMATS = ("mc4", "mc7", "yesno", "open")


def _p_scene(category: str, scene: str) -> float:
    members = synthetic.SCENES[scene].categories
    inside = synthetic._IN_SCENE_PROB * (category in members) / len(members)
    return inside + (1 - synthetic._IN_SCENE_PROB) / len(NAMES)


def _kind(category: str) -> int:
    return int(synthetic._CAT_KIND[synthetic._CAT_POS[category]])


def _cooccurrence(instances: Path) -> tuple[dict[str, Counter], Counter]:
    data = json.loads(instances.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image = defaultdict(list)
    for a in data["annotations"]:
        if not a["iscrowd"]:
            by_image[a["image_id"]].append(names[a["category_id"]])
    together, frequency = defaultdict(Counter), Counter()
    for cats in by_image.values():
        for i, a in enumerate(cats):
            frequency[a] += 1
            for j, b in enumerate(cats):
                if i != j:
                    together[b][a] += 1
    return together, frequency


def classifiers(together: dict[str, Counter], frequency: Counter) -> dict:
    """name -> f(row, scene) -> score(category)."""

    def counts(row):
        return lambda c: sum(together[x][c] for x in row["context"]) + 0.01 * frequency[c] + 1e-6

    return {
        "scene": lambda row, s: lambda c: _p_scene(c, s),
        "shape": lambda row, s: lambda c: (frequency[c] + 0.1) * (_kind(c) == _kind(row["category"])),
        "scene + shape": lambda row, s: lambda c: _p_scene(c, s) * (_kind(c) == _kind(row["category"])),
        "context counts": lambda row, s: counts(row),
    }


def accuracy(rows, score_of, seed: int) -> dict[str, list[bool]]:
    """Per format, whether the classifier is right: the best-scored option (mc), yes iff the candidate is
    the best-scored of all categories (yes/no), the best-scored category (open, asked of the mc4 rows)."""
    rng = np.random.default_rng(0)  # ties broken at random
    right: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        score = score_of(row, synthetic.scene_type(row["image_id"], seed))
        best = NAMES[int(np.argmax([score(c) + rng.random() * 1e-9 for c in NAMES]))]
        if row["format"] == "yesno":
            right["yesno"].append(("yes" if best == row["candidate"] else "no") == row["answer"])
            continue
        picked = int(np.argmax([score(o) + rng.random() * 1e-9 for o in row["options"]]))
        right[row["format"]].append(LETTERS[picked] == row["answer"])
        if row["format"] == "mc4":
            right["open"].append(best == row["category"])
    return right


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a demo work directory (scenes/, data/eval)")
    parser.add_argument("--val-seed", type=int, default=1, help="the held-out scenes' seed (demo: seed + 1)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    together, frequency = _cooccurrence(args.demo / "scenes" / "train" / "instances.json")
    columns = ["image_id", "category", "context", "format", "options", "answer", "candidate"]
    rows = list(load_dataset(args.demo / "data" / "eval").select_columns(columns))
    right = {name: accuracy(rows, c, args.val_seed) for name, c in classifiers(together, frequency).items()}
    results = {name: {f: float(np.mean(v)) for f, v in r.items()} for name, r in right.items()}
    n = {f: len(v) for f, v in right["scene"].items()}
    table = [(name, *(fmt(r.get(f)) for f in FORMATS)) for name, r in results.items()]
    print("\n".join(markdown_table(("classifier", *(f"{f} (n={n[f]})" for f in FORMATS)), table)))
    if args.out:
        args.out.write_text(json.dumps({"n": n, "accuracy": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
