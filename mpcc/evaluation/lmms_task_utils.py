"""The `utils.py` of the lmms-eval task `mpcc export-mpcc-eval --format lmms-eval` writes (this file,
copied as it is): the prompts of the export's rows, mpcc's strict answer parsing and its per-level,
per-format and in/out-of-distribution accuracy, as lmms-eval's task functions.

It imports mpcc's parsing (`mpcc.evaluation.parsing`: the grading `mpcc eval` and the training rewards
share) rather than carrying a copy that could drift from it, so lmms-eval's environment needs mpcc
importable: `pip install --no-deps mpcc` and `pip install levenshtein` (the parsing imports nothing
else mpcc needs). Parsing and metrics are the same as `mpcc eval`'s on the same completions.
"""

from __future__ import annotations

from mpcc.evaluation.parsing import is_correct, parse_answer


def mpcc_doc_to_visual(doc: dict) -> list:
    return [doc["image"].convert("RGB")]


def mpcc_doc_to_text(doc: dict) -> str:
    """The question: the text of the row's user turn."""
    user = next(m for m in doc["prompt"] if m["role"] == "user")
    return "".join(p.get("text") or "" for p in user["content"] if p.get("type") == "text")


def mpcc_doc_to_messages(doc: dict) -> list[dict]:
    """The row's chat as `mpcc eval` sends it: its turns in order, the image in the user turn's image
    placeholder (lmms-eval's message parts: text, and image with the PIL image as `url`)."""
    messages = []
    for message in doc["prompt"]:
        parts = message["content"]
        if isinstance(parts, str):
            parts = [{"type": "text", "text": parts}]
        content = [
            {"type": "image", "url": doc["image"].convert("RGB")}
            if p.get("type") == "image"
            else {"type": "text", "text": p.get("text") or ""}
            for p in parts
        ]
        messages.append({"role": message["role"], "content": content})
    return messages


def mpcc_process_results(doc: dict, results: list[str]) -> dict:
    """One record per metric (each aggregation picks its rows): the strict parse of the completion."""
    parsed, format_ok = parse_answer(results[0], doc)
    record = {
        "correct": is_correct(parsed, doc),
        "format_ok": format_ok,
        "difficulty": doc["difficulty"],
        "format": doc["format"],
        "in_distribution": doc["in_distribution"],
    }
    return {metric: record for metric in METRICS}


def _mean(records: list[dict], key: str = "correct", **where) -> float | None:
    """The share of `records` (those matching `where`) whose `key` is true; None when there are none."""
    kept = [r for r in records if all(r[k] == v for k, v in where.items())]
    return sum(bool(r[key]) for r in kept) / len(kept) if kept else None


# lmms-eval names each metric's aggregation in the task YAML (`!function utils.NAME`).
def mpcc_accuracy(records):
    return _mean(records)


def mpcc_format_compliance(records):
    return _mean(records, "format_ok")


def mpcc_accuracy_easy(records):
    return _mean(records, difficulty="easy")


def mpcc_accuracy_middle(records):
    return _mean(records, difficulty="middle")


def mpcc_accuracy_hard(records):
    return _mean(records, difficulty="hard")


def mpcc_accuracy_mc4(records):
    return _mean(records, format="mc4")


def mpcc_accuracy_mc7(records):
    return _mean(records, format="mc7")


def mpcc_accuracy_yesno(records):
    return _mean(records, format="yesno")


def mpcc_accuracy_in_distribution(records):
    return _mean(records, in_distribution=True)


def mpcc_accuracy_ood(records):
    return _mean(records, in_distribution=False)


METRICS = (
    "accuracy", "format_compliance", "accuracy_easy", "accuracy_middle", "accuracy_hard", "accuracy_mc4",
    "accuracy_mc7", "accuracy_yesno", "accuracy_in_distribution", "accuracy_ood",
)  # fmt: skip  # each aggregated by mpcc_<metric>
