"""grpo_bench.md: the `mpcc bench grpo` results (grpo_bench.json) as one table, with the settings and
versions that produced them, so a number is never read without what it was measured on."""

from __future__ import annotations

from mpcc.reports.tables import MISSING, fmt, markdown_table

_COLUMNS = {  # header: (result key, format)
    "step (s)": ("step_s", ".3f"),
    "generation (s)": ("generation_s", ".3f"),
    "scoring (s)": ("scoring_s", ".4f"),
    "training (s)": ("training_s", ".3f"),
    "generated tok/s": ("generated_tokens_per_s", ".0f"),
    "training tok/s": ("train_tokens_per_s", ".0f"),
    "vision calls": ("vision_calls", ".0f"),
    "patches encoded": ("patches_encoded", ".0f"),
    "MFU": ("mfu", ".1%"),  # None: no known peak for the device
    "peak GiB": ("peak_memory_gib", ".1f"),  # None: not measured off CUDA
}


def _speedup(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}x"


def bench_markdown(report: dict) -> str:
    """The settings line, the command, then one row per trainer variant (medians of the timed steps)."""
    c = {"arch": "qwen2_5_vl"} | report["config"]  # a report from before `--arch` is Qwen2.5-VL's
    rows = [
        (name, *(fmt(r[key], spec) for key, spec in _COLUMNS.values()), _speedup(r["speedup_vs_vanilla"]))
        for name, r in report["variants"].items()
    ]
    lines = [
        f"GRPO step, {c['arch']} shape `{c['shape']}`, {c['prompts']} prompts x G={c['generations']}, "
        f"{c['max_new_tokens']} new tokens, {c['image_size'][0]}x{c['image_size'][1]} images; "
        f"medians of {c['steps']} steps after {c['warmup']} warm-up; device: {report['device']}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
        f"Command: `{report['command']}`",
        "",
        *markdown_table(("trainer", *_COLUMNS, "vs vanilla"), rows),
    ]
    if not report["gpu"]:
        lines += [
            "On CPU, transformers does not compile generation: the `_compiled` variants run a static "
            "cache without compilation here.",
            "",
        ]
    return "\n".join(lines)
