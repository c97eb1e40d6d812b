"""What S4(a) did to 1A's merchants (DESIGN §12, "merchants stay themselves"): retention,
outlets in pairs 1A does not have, merchants that lost their home, move distances and new
countries per merchant. Pair-level arithmetic; never one value per site."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from seg1b_dask.states.s4_alloc_plan.moves import Moves


def weighted_quantiles(values: NDArray[np.float64], weights: NDArray[np.int64], q: list[float]) -> list[float]:
    """Quantiles of ``values`` repeated ``weights`` times (the lower value at a tie), without repeating them."""
    keep = weights > 0
    if not keep.any():
        return [float("nan")] * len(q)
    order = np.argsort(values[keep], kind="stable")
    v, cumulative = values[keep][order], np.cumsum(weights[keep][order])
    total = int(cumulative[-1])
    return [float(v[np.searchsorted(cumulative, max(1, int(np.ceil(p * total))))]) for p in q]


def merchant_figures(
    m_index: NDArray[np.int64],
    pair_country: NDArray[np.int64],
    pair_sites: NDArray[np.int64],
    pair_home: NDArray[np.int64],
    final_m: NDArray[np.int64],
    final_c: NDArray[np.int64],
    final_n: NDArray[np.int64],
    moves: Moves,
    distance_km: NDArray[np.float64],
) -> dict[str, Any]:
    """Merchants before (1A pairs, ``m_index`` per pair) and after (final cells)."""
    n_countries = len(distance_km)
    n_merchants = int(m_index.max()) + 1 if len(m_index) else 0
    total = max(int(pair_sites.sum()), 1)
    home_of = np.zeros(n_merchants, dtype=np.int64)
    home_of[m_index] = pair_home
    had = np.unique(m_index * n_countries + pair_country)
    cell = final_m * n_countries + final_c
    at = np.minimum(np.searchsorted(had, cell), max(len(had) - 1, 0))
    known = had[at] == cell if len(had) else np.zeros(len(cell), dtype=bool)  # a 1A pair: a binary search
    per_merchant = np.bincount(final_m, weights=final_n, minlength=n_merchants)
    retained = np.bincount(final_m, weights=np.where(known, final_n, 0), minlength=n_merchants) / per_merchant
    new_countries = np.bincount(final_m[~known], minlength=n_merchants)
    at_home_1a = np.bincount(m_index, weights=np.where(pair_country == pair_home, pair_sites, 0), minlength=n_merchants)
    at_home_1b = np.bincount(final_m, weights=np.where(final_c == home_of[final_m], final_n, 0), minlength=n_merchants)
    src, dst, length = moves.src_country, moves.dst_country, moves.length
    move_km = weighted_quantiles(distance_km[src, dst], length, [0.5, 0.9])
    new_km = weighted_quantiles(distance_km[home_of[final_m[~known]], final_c[~known]], final_n[~known], [0.5, 0.9])
    figures = {
        "merchant_retention_median": float(np.median(retained)) if n_merchants else float("nan"),
        "merchant_retention_p10": float(np.quantile(retained, 0.1)) if n_merchants else float("nan"),
        "new_pair_share": float(final_n[~known].sum() / total),
        "merchants_lost_home": int(((at_home_1a > 0) & (at_home_1b == 0)).sum()),
        "home_outlets_kept_share": float(at_home_1b.sum() / max(at_home_1a.sum(), 1)),
        "move_km_median": move_km[0],
        "move_km_p90": move_km[1],
        "new_pair_home_km_median": new_km[0],
        "new_pair_home_km_p90": new_km[1],
        "new_countries_median": float(np.median(new_countries)) if n_merchants else float("nan"),
        "new_countries_p90": float(np.quantile(new_countries, 0.9)) if n_merchants else float("nan"),
        "new_countries_max": int(new_countries.max()) if n_merchants else 0,
    }
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in figures.items()}
