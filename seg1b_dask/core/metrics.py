"""Realism metrics, exactly as defined in DESIGN §6. Pure functions on arrays."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

EARTH_RADIUS_KM = 6371.0088
TOPK_FRACTIONS = {"top1": 0.01, "top5": 0.05, "top10": 0.10}
# The country-level figures of DESIGN §6, in the order summaries show them.
COUNTRY_METRICS = (
    "country_gini",
    "top1_share",
    "top5_share",
    "top10_share",
    "eligible_country_nonzero_share",
    "southern_hemisphere_share",
)


def country_gini(counts: NDArray[Any]) -> float:
    """G = Σ(2i−n−1)x_i / (n Σx) over countries with ≥ 1 site, ascending."""
    x = np.sort(np.asarray(counts, dtype=np.float64)[np.asarray(counts) > 0])
    n = len(x)
    if n == 0:
        return float("nan")
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * x.sum()))


def top_share(counts: NDArray[Any], fraction: float) -> tuple[float, int]:
    """Share of the top k = max(1, ceil(f · n_active)) countries, and k."""
    x = np.sort(np.asarray(counts)[np.asarray(counts) > 0])[::-1]
    k = max(1, math.ceil(round(fraction * len(x), 9)))
    return float(x[:k].sum() / x.sum()), k


def unit_vectors(lon_deg: NDArray[np.float64], lat_deg: NDArray[np.float64]) -> NDArray[np.float64]:
    lon, lat = np.radians(lon_deg), np.radians(lat_deg)
    return np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])


def nearest_neighbour_km(lon_deg: NDArray[np.float64], lat_deg: NDArray[np.float64]) -> NDArray[np.float64]:
    """Great-circle distance of every site to its nearest other site (global, exact)."""
    from scipy.spatial import cKDTree

    xyz = unit_vectors(lon_deg, lat_deg)
    chord, _ = cKDTree(xyz).query(xyz, k=2, workers=-1)
    return 2.0 * np.arcsin(np.clip(chord[:, 1] / 2.0, 0.0, 1.0)) * EARTH_RADIUS_KM


def concentration(counts: NDArray[Any]) -> dict[str, float]:
    """Gini and top-k shares of a count (or share) vector."""
    out = {"country_gini": country_gini(counts)}
    for name, f in TOPK_FRACTIONS.items():
        out[f"{name}_share"] = top_share(counts, f)[0]
    return out


def country_metrics(counts_by_country: Mapping[str, float], eligible_count: int) -> dict[str, float]:
    """Concentration and coverage of sites (or shares) per country."""
    counts = np.asarray(list(counts_by_country.values()), dtype=np.float64)
    active = int((counts > 0).sum())
    out: dict[str, float] = {**concentration(counts), "active_countries": active, "eligible_countries": eligible_count}
    for name, f in TOPK_FRACTIONS.items():
        out[f"{name}_k"] = top_share(counts, f)[1]
    out["eligible_country_nonzero_share"] = active / eligible_count
    return out


def merchant_footprint(merchant: NDArray[Any], country: NDArray[Any], max_countries: int) -> dict[str, float]:
    """Countries per merchant over distinct (merchant, country) pairs; the share of merchants
    above ``max_countries`` (the graded 1A bundle's own largest footprint)."""
    order = np.lexsort((country, merchant))  # pairs in (merchant, country) order
    m, c = merchant[order], country[order]
    per_merchant = np.zeros(0, dtype=np.int64)
    if len(m):
        new_merchant = np.r_[True, m[1:] != m[:-1]]
        new_pair = new_merchant | np.r_[True, c[1:] != c[:-1]]
        per_merchant = np.add.reduceat(new_pair.astype(np.int64), np.flatnonzero(new_merchant))
    return {
        "merchant_countries_median": float(np.median(per_merchant)),
        "merchant_countries_p90": float(np.quantile(per_merchant, 0.9)),
        "merchant_countries_max": int(per_merchant.max()),
        "merchants_above_1a_max_share": float((per_merchant > max_countries).mean()),
    }


def largest_footprint(pair_merchant: NDArray[Any]) -> int:
    """The most countries any merchant spans, from one row per (merchant, country) pair."""
    return int(np.unique(pair_merchant, return_counts=True)[1].max()) if len(pair_merchant) else 0


NN_HISTOGRAM_EDGES_KM = np.logspace(-4, 4, 81)  # 10 cm to 10 000 km, 10 bins a decade


NN_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)


def nn_report_counts(nn_km: NDArray[np.float64]) -> NDArray[np.int64]:
    """Distances per report bin (clipped into the outer bins); sums of parts add up."""
    counts: NDArray[np.int64] = np.histogram(np.clip(nn_km, 1e-4, 1e4), bins=NN_HISTOGRAM_EDGES_KM)[0]
    return counts


@dataclass(frozen=True)
class NNSummary:
    """What the scorecard keeps of the nearest-neighbour distances: their quantiles at
    ``NN_QUANTILES`` (numpy's linear method; None below two sites) and the report histogram."""

    quantiles: NDArray[np.float64] | None
    counts: NDArray[np.int64]

    @classmethod
    def of(cls, nn_km: NDArray[np.float64]) -> NNSummary:
        """From every distance in memory."""
        return cls(np.quantile(nn_km, NN_QUANTILES) if len(nn_km) else None, nn_report_counts(nn_km))


def nn_histogram(nn: NNSummary) -> dict[str, list[float]]:
    """Counts of nearest-neighbour distances on log bins, so a report can draw the
    distribution without recomputing it."""
    return {"edges_km": NN_HISTOGRAM_EDGES_KM.tolist(), "counts": nn.counts.tolist()}


def nn_metrics(nn: NNSummary) -> dict[str, float]:
    if nn.quantiles is None:  # fewer than two sites: undefined, which fails closed
        return {k: float("nan") for k in ("nn_p50_km", "nn_p75_km", "nn_p90_km", "nn_p95_km", "nn_p99_km", "nn_ratio")}
    q = nn.quantiles
    p50, p99 = float(q[0]), float(q[4])
    return {
        "nn_p50_km": p50,
        "nn_p75_km": float(q[1]),
        "nn_p90_km": float(q[2]),
        "nn_p95_km": float(q[3]),
        "nn_p99_km": p99,
        # p50 = 0 is a failure, never a perfect score: the ratio is undefined (NaN).
        "nn_ratio": p99 / p50 if p50 > 0 else float("nan"),
    }
