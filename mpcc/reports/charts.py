"""PNG charts of eval metrics: accuracy by level and format, for one run or several side by side; the
step-level grounding's curves and per-layer, per-head heat maps."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

from mpcc.data.difficulty import LEVELS  # noqa: E402

ACCURACY_CHART = "accuracy.png"  # a run's and a comparison's accuracy_chart


def _accuracy(metrics: dict, level: str, fmt: str) -> float:
    cell = metrics.get("per_level_format", {}).get(level, {}).get(fmt)
    return float(cell["accuracy"]) if cell else float("nan")


def accuracy_chart(runs: dict[str, dict], out: str | Path, formats: list[str] | None = None) -> Path:
    """Grouped bars: one group per (level, format), one bar per run."""
    formats = formats or sorted(
        {f for m in runs.values() for lv in m.get("per_level_format", {}).values() for f in lv}
    )
    groups = [(lv, f) for f in formats for lv in LEVELS]
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups)), 3.6), dpi=100)
    for k, (name, metrics) in enumerate(runs.items()):
        xs = [i + k * width for i in range(len(groups))]
        ax.bar(xs, [_accuracy(metrics, lv, f) for lv, f in groups], width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{f}\n{lv}" for lv, f in groups], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    return _save(fig, ax, out)


def _save(fig, ax, out: str | Path) -> Path:
    """Legend, layout, a PNG without a timestamp-bearing Software tag (same bytes for the same chart)."""
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _write(fig, out)


def _write(fig, out: str | Path) -> Path:
    out = Path(out)
    fig.savefig(out, format="png", metadata={"Software": None})
    plt.close(fig)
    return out


def _plot(ax, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str) -> None:
    for name, (xs, ys) in series.items():
        ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", markersize=3, label=name)
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _lines(series: dict[str, tuple[list, list]], out: str | Path, xlabel: str, ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    _plot(ax, series, xlabel, ylabel)
    return _save(fig, ax, out)


_POSITION = "reasoning position (0 = first token, 1 = last)"


def evidence_chart(
    curves: dict[str, tuple[list, list]], out: str | Path, raw: dict[str, tuple[list, list]] | None = None
) -> Path:
    """The evidence share of image attention vs normalised reasoning position, one line per name; with
    `raw`, beside it the raw evidence mass (a share of all keys: it falls as the keys grow, whatever the
    model looks at)."""
    if not raw:
        return _lines(curves, out, _POSITION, "evidence share of image attention")
    fig, (ax, ax_raw) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    _plot(ax, curves, _POSITION, "evidence share of image attention")
    _plot(ax_raw, raw, _POSITION, "evidence mass, raw (share of all keys)")
    ax_raw.legend(fontsize=8)
    return _save(fig, ax, out)


def profile_chart(lift: list, layers: list[int], thirds: list[str], out: str | Path) -> Path:
    """Heat maps of the evidence lift per measured layer (rows) and head (columns), one per third of the
    reasoning, on one colour scale centred at 1 (no preference for the evidence among image tokens)."""
    values = np.array(lift, dtype=float)  # (thirds, layers, heads); None -> NaN
    finite = values[np.isfinite(values)]
    # at least +-0.05: a model without preference (lifts within a few thousandths of 1) stays white
    spread = max(float(np.abs(finite - 1).max()) if finite.size else 0.0, 0.05)
    norm = TwoSlopeNorm(vcenter=1.0, vmin=max(0.0, 1 - spread), vmax=1 + spread)
    width = min(16, 2 + len(thirds) * max(2.0, 0.25 * values.shape[2]))
    height = min(12, 1.5 + max(1.5, 0.25 * values.shape[1]))
    fig, axes = plt.subplots(
        1, len(thirds), figsize=(width, height), dpi=100, sharey=True, layout="constrained"
    )
    axes = np.atleast_1d(axes)
    for ax, name, matrix in zip(axes, thirds, values):
        image = ax.imshow(matrix, cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest")
        ax.set_title(f"{name} third of the reasoning", fontsize=9)
        ax.set_xlabel("head")
    axes[0].set_yticks(range(len(layers)), labels=[str(layer) for layer in layers])
    axes[0].set_ylabel("layer")
    fig.colorbar(image, ax=axes, label="evidence lift (1: no preference)")
    return _write(fig, out)


def risk_coverage_chart(curves: dict[str, tuple[list, list]], out: str | Path) -> Path:
    """Selective risk vs coverage, one line per confidence ranking (lower is better)."""
    return _lines(curves, out, "coverage (answers kept, most confident first)", "risk (error rate)")


def reward_curve_chart(curves: dict[str, tuple[list, list]], out: str | Path, window: int = 10) -> Path:
    """Mean reward of the generated samples vs training step, one colour per run: each step as a faint
    dot (a step's few groups make it noisy), the mean of the last `window` steps as the line."""
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for name, (xs, ys) in curves.items():
        (dots,) = ax.plot(xs, ys, ".", alpha=0.35)
        running = [float(np.mean(ys[max(0, i + 1 - window) : i + 1])) for i in range(len(ys))]
        ax.plot(xs, running, color=dots.get_color(), label=f"{name} (mean of the last {window} steps)")
    ax.set_xlabel("training step")
    ax.set_ylabel("mean reward of generated samples")
    return _save(fig, ax, out)


def _running_mean(ys: list[float], window: int) -> list[float]:
    return [float(np.mean(ys[max(0, i + 1 - window) : i + 1])) for i in range(len(ys))]


def seed_band_chart(
    curves: dict[str, dict[int, tuple[list, list]]], out: str | Path, ylabel: str, window: int = 10
) -> Path:
    """Per run, the mean over seeds of each seed's running mean (last `window` logged steps) vs training
    step, in a band from the lowest to the highest seed: how far a curve is from its seeds' spread."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for name, by_seed in curves.items():
        steps = sorted(set.intersection(*(set(xs) for xs, _ in by_seed.values()))) if by_seed else []
        if not steps:
            continue
        smooth = []
        for xs, ys in by_seed.values():
            at = dict(zip(xs, _running_mean(ys, window)))
            smooth.append([at[s] for s in steps])
        values = np.array(smooth)
        (line,) = ax.plot(steps, values.mean(0), label=f"{name} ({len(by_seed)} seeds)")
        ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{ylabel}\n(mean of the last {window} steps)")
    return _save(fig, ax, out)


def interval_bars_chart(
    runs: dict[str, dict[str, dict | None]], columns: list[str], out: str | Path, chance: dict | None = None
) -> Path:
    """Grouped bars, one group per column and one bar per run, each with its interval as an error bar
    (cells as mpcc.evaluation.intervals.Estimate dicts; a cell without interval: a bar without one, a
    missing cell: none); `chance` draws a short line at each column's chance level."""
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(columns) + 1), 3.8), dpi=100)
    for k, (name, cells) in enumerate(runs.items()):
        xs = [i + k * width for i in range(len(columns))]
        cell = [cells.get(c) for c in columns]
        heights = [c["value"] if c and c["value"] is not None else np.nan for c in cell]
        below = [c["value"] - c["low"] if c and c["low"] is not None else 0 for c in cell]
        above = [c["high"] - c["value"] if c and c["low"] is not None else 0 for c in cell]
        ax.bar(xs, heights, width, yerr=[below, above], capsize=2, label=name, error_kw={"linewidth": 0.8})
    for i, column in enumerate(columns):
        if chance and column in chance:
            ax.hlines(chance[column], i - width / 2, i + 0.8 - width / 2, colors="black", linestyles="dotted")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(columns))])
    ax.set_xticklabels(columns, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% interval; dotted: chance)")
    return _save(fig, ax, out)
