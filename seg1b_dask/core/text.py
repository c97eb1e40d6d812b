"""How a figure is written wherever a person reads it (summaries, plan items, pages)."""

from __future__ import annotations

import math
from typing import Any

MISSING = "n/a"


def number(value: Any, digits: int = 4) -> str:
    """A float to ``digits`` decimals; ``n/a`` for a missing or NaN figure; anything else as is."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def columns(rows: list[list[str]], widths: list[int], align: str) -> list[str]:
    """``rows`` as lines of text columns, two spaces in and one space between columns: each
    column as wide as its widest cell and at least its ``widths`` entry, ``align`` giving each
    column's "<" (left) or ">" (right). A row may stop short of the last columns."""
    wide = [max([widths[i], *(len(r[i]) for r in rows if i < len(r))]) for i in range(len(widths))]
    return ["  " + " ".join(f"{c:{align[i]}{wide[i]}}" for i, c in enumerate(r)).rstrip() for r in rows]
