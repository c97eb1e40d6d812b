"""Exact quantiles of values spread over many parts, without gathering them.

numpy's default ``linear`` quantile of n sorted values needs the values at two ranks per
quantile. Each part counts its values on a fixed fine grid (``SELECT_EDGES``); the summed
counts say in which bin, and at which rank inside it, each needed value lies; the parts then
return only their distinct values in those bins (with counts), among which the rank is
picked. The interpolation repeats numpy's own arithmetic, so the results equal
``np.quantile`` bit for bit (tests compare them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

# Bin i holds SELECT_EDGES[i] <= v < SELECT_EDGES[i + 1] (the last bin: v >= its edge);
# 0, then 2^16 log-spaced edges from 1e-7 to 1e5 (neighbours 0.04 % apart).
SELECT_EDGES = np.r_[0.0, np.logspace(-7, 5, 1 << 16)]
NAN_BIN = len(SELECT_EDGES)  # one more count: NaN values (their quantiles are undefined, as numpy's)

Floats = NDArray[np.float64]


def bin_counts(values: Floats) -> NDArray[np.int64]:
    """Values (≥ 0) per selection bin, then the NaN count (``NAN_BIN``)."""
    index = np.where(np.isnan(values), NAN_BIN, np.searchsorted(SELECT_EDGES, values, side="right") - 1)
    return np.bincount(index, minlength=NAN_BIN + 1).astype(np.int64)


def bin_range(sorted_values: Floats, b: int) -> Floats:
    """The values of one bin, from sorted values."""
    lo = np.searchsorted(sorted_values, SELECT_EDGES[b], side="left")
    hi = len(sorted_values) if b + 1 == len(SELECT_EDGES) else np.searchsorted(sorted_values, SELECT_EDGES[b + 1])
    return sorted_values[lo:hi]


def distinct_in_bins(sorted_values: Floats, bins: Sequence[int]) -> dict[int, tuple[Floats, NDArray[np.int64]]]:
    """Per asked bin, its distinct values and how often each occurs (a collapsed placement
    repeats one distance many times: counts keep that small)."""
    out = {}
    for b in bins:
        values, counts = np.unique(bin_range(sorted_values, b), return_counts=True)
        out[int(b)] = (values, counts.astype(np.int64))
    return out


@dataclass(frozen=True)
class Plan:
    """Where the order statistics of a linear quantile lie."""

    previous: NDArray[np.int64]  # the lower rank per quantile
    following: NDArray[np.int64]  # the upper rank per quantile
    gamma: Floats  # the weight of the upper value, as numpy computes it

    @property
    def ranks(self) -> list[int]:
        return sorted({*self.previous.tolist(), *self.following.tolist()})


def plan(n: int, quantiles: Sequence[float]) -> Plan:
    """The ranks numpy's ``linear`` method reads for ``quantiles`` of n values (n ≥ 1)."""
    q = np.asarray(quantiles, dtype=np.float64)
    virtual = (n - 1) * q
    previous = np.floor(virtual).astype(np.int64)
    following = previous + 1
    above = virtual >= n - 1
    previous[above] = n - 1
    following[above] = n - 1
    # numpy marks a quantile at or past the last rank with index -1 before taking its weight
    gamma = np.asarray(virtual - np.where(above, -1, previous), dtype=np.float64)
    return Plan(previous, following, gamma)


def locate(totals: NDArray[np.int64], ranks: Sequence[int]) -> dict[int, tuple[int, int]]:
    """rank → (its bin, its rank inside the bin), from the summed per-bin counts."""
    cumulative = np.cumsum(totals)
    out = {}
    for r in ranks:
        b = int(np.searchsorted(cumulative, r, side="right"))
        out[int(r)] = (b, int(r - (cumulative[b - 1] if b else 0)))
    return out


def kth(parts: Sequence[tuple[Floats, NDArray[np.int64]]], k: int) -> float:
    """The k-th smallest (0-based) of a bin, from every part's distinct values and counts."""
    values = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    order = np.argsort(values, kind="stable")
    return float(values[order][np.searchsorted(np.cumsum(counts[order]), k, side="right")])


def interpolate(p: Plan, value_at: dict[int, float]) -> Floats:
    """numpy's ``linear`` interpolation between the values at the planned ranks."""
    a = np.asarray([value_at[int(r)] for r in p.previous], dtype=np.float64)
    b = np.asarray([value_at[int(r)] for r in p.following], dtype=np.float64)
    diff = b - a
    out = np.add(a, diff * p.gamma)
    np.subtract(b, diff * (1 - p.gamma), out=out, where=p.gamma >= 0.5)
    return out
