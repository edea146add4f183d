"""Markdown tables: the one writer behind notebooks, reports and benchmarks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any


def four_decimals(value: float) -> str:
    """The default float format of ``markdown_table``."""
    return f"{value:.4f}"


def markdown_table(rows: Iterable[Sequence[Any]], headers: Sequence[str],
                   float_format: Callable[[float], str] = four_decimals) -> str:
    """A Markdown table; floats go through ``float_format``, None is an empty cell."""
    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return float_format(value)
        return str(value).replace("|", "\\|")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
