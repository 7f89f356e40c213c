"""The one markdown table writer and the number formats every report shares, so a rate, a missing value
or a table reads the same in report.md, compare.md, the model card and the benchmark tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

MISSING = "–"  # a cell with nothing to show: a group without records, a measure not computed


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The table's lines and a blank one after it, so sections concatenate as lists of lines."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows] + [""]


def fmt(value: float | None, spec: str = ".3f") -> str:
    """`value` in format `spec` (three decimals by default), MISSING for None."""
    return MISSING if value is None else format(value, spec)


def accuracy(cell: dict[str, Any] | None) -> str:
    """A metrics cell's accuracy, MISSING when the cell is absent (no records in that group)."""
    return fmt(cell["accuracy"]) if cell else MISSING


def accuracy_n(cell: dict[str, Any] | None) -> str:
    """A metrics cell's accuracy with its count (n says how far to trust it), as breakdowns show it."""
    return f"{accuracy(cell)} (n={cell['n']})" if cell else MISSING


def estimate(cell: dict[str, Any] | None, spec: str = ".3f") -> str:
    """An interval estimate (mpcc.evaluation.intervals.Estimate as a dict) as `value [low, high] (n=N)`;
    "too few answers (n=N)" when it has no interval, for then there is no claim to print; MISSING when
    the measure was not computed."""
    if cell is None:
        return MISSING
    if cell["low"] is None:
        return f"too few answers (n={cell['n']})"
    return f"{cell['value']:{spec}} [{cell['low']:{spec}}, {cell['high']:{spec}}] (n={cell['n']})"
