"""Exact integer sums of fixed-point cell weights, whatever the banding."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

_PART_BITS = 21  # sums of 21-bit parts stay exact in float64 for bands under 2**32 cells


def country_sums(country_id: NDArray[np.int16], weight: NDArray[np.uint64], n_countries: int) -> list[int]:
    """Exact integer mass per country id (index 0 = no country)."""
    ids = country_id.ravel().astype(np.intp)
    w = weight.ravel().astype(np.uint64)
    total = [0] * (n_countries + 1)
    for shift in (0, _PART_BITS, 2 * _PART_BITS):
        part = ((w >> np.uint64(shift)) & np.uint64((1 << _PART_BITS) - 1)).astype(np.float64)
        sums = np.bincount(ids, weights=part, minlength=n_countries + 1)
        total = [t + (int(s) << shift) for t, s in zip(total, sums.tolist(), strict=True)]
    return total


def sum_lists(parts: list[list[int]]) -> list[int]:
    """Column sums of equal-length integer lists (Python ints: never overflow)."""
    return [sum(col) for col in zip(*parts, strict=True)]
