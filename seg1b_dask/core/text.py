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
