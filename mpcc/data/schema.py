"""The columns of MPCC datasets, documented once. The README's schema table is this dict.

Train and eval share the common columns; both add the question format and answer columns (train: one
row per target, eval: one per format item); annotated train builds add the trace's verification and
provenance columns.
"""

from __future__ import annotations

from datasets import Features, Image, List, Value

_MESSAGE = {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}

COMMON = {
    "image": (Image(), "the masked image (PNG, lossless: hidden pixels stay exactly the fill)"),
    "image_id": (Value("int64"), "COCO image id"),
    "ann_id": (Value("int64"), "COCO annotation id of the hidden instance"),
    "file_name": (Value("string"), "image file, relative to the images directory"),
    "width": (Value("int32"), "image width in pixels"),
    "height": (Value("int32"), "image height in pixels"),
    "bbox": (List(Value("float64"), length=4), "target box [x, y, w, h] (COCO)"),
    "mask": (
        {"size": List(Value("int32"), length=2), "counts": Value("string")},
        "target instance mask, compressed COCO RLE (pycocotools)",
    ),
    "area_frac": (Value("float32"), "instance area / image area"),
    "category": (Value("string"), "hidden category name"),
    "category_id": (Value("int32"), "COCO category id"),
    "supercategory": (Value("string"), "COCO supercategory"),
    "solution": (
        Value("string"),
        "the category name: the ground truth of open questions (multiple-choice and yes/no rows are graded "
        "by `answer`)",
    ),
    "context": (List(Value("string")), "categories of the other annotated instances, sorted, unique"),
    "context_ann_ids": (List(Value("int64")), "annotation ids of the other instances in the image"),
    "predictability": (
        Value("float32"),
        "rank of the hidden category under its context's co-occurrence "
        "scores: 1 = the most expected category, 0 = the least",
    ),
    "difficulty_score": (Value("float32"), "model-free difficulty in [0, 1] (see mpcc.data.difficulty)"),
    "difficulty": (Value("string"), "easy / middle / hard (thresholds from the training build)"),
    "prompt": (List(_MESSAGE), "chat messages (system + user with an image placeholder), as TRL expects"),
}
# Train builds ask one question per target; builds before these columns existed ask the open one.
TRAIN = {
    "format": (Value("string"), "open / mc4 / mc7 / yesno: the question the row asks (`--formats`)"),
    "options": (List(Value("string")), "option texts in letter order (mc), ['yes', 'no'] (yesno), or []"),
    "answer": (
        Value("string"),
        "what the model is trained to answer: the correct letter (mc), yes / no, or the solution (open)",
    ),
    "candidate": (Value("string"), "category asked about (yesno only, else empty)"),
    "reasoning": (
        Value("string"),
        "reasoning trace (the text of the think block) for SFT and prior sampling, or null",
    ),
}
# Added to train builds by `mpcc annotate` / `mpcc annotate import` (mpcc.annotation).
ANNOTATED = {
    "reasoning_verified": (
        Value("bool"),
        "true: `reasoning` passed verification (mpcc.annotation.verify); false: `reasoning` is null",
    ),
    "reasoning_rejection": (
        Value("string"),
        "why the row has no trace: the last answer's failed check, teacher_error or no_trace; null when kept",
    ),
    "reasoning_attempts": (Value("int32"), "teacher answers (or imported traces) tried for the row"),
    "reasoning_teacher": (Value("string"), "model (@ endpoint) or import file that wrote the trace"),
    "reasoning_mode": (Value("string"), "guided / blind (teacher prompting mode) or import"),
    "reasoning_prompt_version": (
        Value("string"),
        "teacher prompt version (mpcc.annotation.prompts.PROMPT_VERSION), or the import file's",
    ),
    "reasoning_date": (Value("string"), "when the trace was written or imported (ISO 8601, UTC)"),
    "teacher_output": (Value("string"), "the full answer behind the trace, or the last rejected one"),
}
EVAL = {
    "item_id": (Value("string"), "'<image_id>-<ann_id>': groups the rows of one hidden object"),
    "in_distribution": (Value("bool"), "false when the category is held out of training (OOD)"),
    "format": (Value("string"), "mc4 / mc7 / yesno"),
    "options": (List(Value("string")), "option texts in letter order (mc), or ['yes', 'no']"),
    "option_kinds": (List(Value("string")), "answer / confusable / irrelevant per option (mc only)"),
    "answer": (Value("string"), "correct letter (mc) or yes / no"),
    "candidate": (Value("string"), "category asked about (yesno only)"),
    "candidate_kind": (Value("string"), "answer / confusable / irrelevant for the candidate (yesno only)"),
    "distractors": (
        {
            "choice": List(Value("string")),
            "judgement": List(Value("string")),
            "irrelevant": List(Value("string")),
        },
        "the item's negatives in MPCC-Eval's layout (2 choice, 2 judgement confusions, 2 irrelevant)",
    ),
}


def features(split: str) -> Features:
    extra = {"train": TRAIN, "eval": EVAL}[split]
    return Features({name: feature for name, (feature, _) in {**COMMON, **extra}.items()})


def markdown_table() -> str:
    rows = ["| column | split | meaning |", "|---|---|---|"]
    for split, cols in (("both", COMMON), ("train", TRAIN), ("annotated", ANNOTATED), ("eval", EVAL)):
        rows += [f"| `{name}` | {split} | {doc} |" for name, (_, doc) in cols.items()]
    return "\n".join(rows)
