"""S4(a) ``remass``: the governed re-mass of country totals (DESIGN §5, §12).

1. Targets: integer site counts per country from the S2 mass vector (optionally mixed with
   1A's own country shares by ``fidelity_weight`` and governed again), ≥ ``min_sites_per_country``
   for every eligible country, summing to the 1A total.
2. Retention per country: a country above its target keeps exactly its target of 1A
   outlets — its home merchants first, then the others in proportion — and one at or below
   target keeps all. The rest are mobile: their number is the total variation between 1A's
   counts and the targets, the least any allocation hitting the targets can move.
3. Placement: the mobile outlets go to the under-target countries by least-distance
   transport from each merchant's home (a min-cost flow, OR-Tools), with every
   (merchant, country) cell capped so that a country's need is spread over several merchants
   and a merchant fits in ``max_new_countries``. Dense entropic transport (IPF) sprays a
   16-outlet merchant over ~15 countries; the min-cost optimum is integral and sparse, so
   footprints stay near 1A's. Every merchant's total and every country's target are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ... import metrics, rng
from ...errors import Code, InternalError, Seg1BError
from ...metrics import EARTH_RADIUS_KM, unit_vectors
from ...policies import CountryAllocationRemass


@dataclass(frozen=True)
class Pairs:
    """1A's (merchant, country) counts, sorted by merchant then country index; ``home`` is
    the merchant's home country index on every row."""

    merchant: NDArray[np.uint64]
    country: NDArray[np.int64]
    n_sites: NDArray[np.int64]
    home: NDArray[np.int64]


@dataclass(frozen=True)
class Moves:
    """Relocated 1A stubs as runs: ``length`` stubs of ``merchant`` leave ``src_country``
    (site_order ``src_first``…) and arrive in ``dst_country`` (site_order ``dst_first``…).
    Runs are pair-level, so a plan never holds one row per relocated site."""

    merchant: NDArray[np.uint64]
    src_country: NDArray[np.int64]
    src_first: NDArray[np.int64]
    dst_country: NDArray[np.int64]
    dst_first: NDArray[np.int64]
    length: NDArray[np.int64]

    def take(self, rows: NDArray[np.intp]) -> Moves:
        return Moves(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))

    def expand(
        self,
    ) -> tuple[NDArray[np.uint64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """One row per stub: merchant, source country, source order, destination country, order."""
        run = np.repeat(np.arange(len(self.length)), self.length)
        step = _ranks(self.length)
        return (
            self.merchant[run],
            self.src_country[run],
            self.src_first[run] + step,
            self.dst_country[run],
            self.dst_first[run] + step,
        )


@dataclass(frozen=True)
class Allocation:
    merchant: NDArray[np.uint64]
    country: NDArray[np.int64]
    n_sites: NDArray[np.int64]
    kept: NDArray[np.int64]  # per 1A pair: outlets kept in the 1A country (site_order 1..kept)
    moves: Moves
    stats: dict[str, Any]


def no_moves() -> Moves:
    empty = np.zeros(0, dtype=np.int64)
    return Moves(np.zeros(0, dtype=np.uint64), empty, empty, empty, empty, empty)


def footprint(
    merchant: NDArray[np.uint64],
    country: NDArray[np.int64],
    n_sites: NDArray[np.int64],
    home: NDArray[np.int64],
    tag: str,
) -> dict[str, float]:
    """Merchant footprint figures (``metrics.merchant_footprint``) and the share of outlets
    outside the home country, suffixed ``_1a`` or ``_1b``."""
    live = n_sites > 0
    figures = metrics.merchant_footprint(merchant[live], country[live])
    figures["outside_home_share"] = round(
        float(n_sites[live & (country != home)].sum() / max(int(n_sites.sum()), 1)), 6
    )
    return {f"{k}_{tag}": v for k, v in figures.items()}


def _proportional(budget: int, counts: NDArray[np.int64], tie: NDArray[np.uint64]) -> NDArray[np.int64]:
    """Largest remainder of ``budget`` over ``counts`` (≤ each count), ties by ``tie``."""
    total = int(counts.sum())
    if budget >= total:
        return counts.copy()
    product = counts * budget
    keep = product // total
    remainder = product % total
    short = budget - int(keep.sum())
    order = np.lexsort((tie, -remainder))
    keep[order[:short]] += 1
    return keep


def retain(pairs: Pairs, targets: NDArray[np.int64], key: np.uint64) -> NDArray[np.int64]:
    """Outlets each pair keeps in its 1A country: over-target countries keep exactly their
    target, home merchants first; others keep all."""
    keep = pairs.n_sites.copy()
    totals = np.bincount(pairs.country, weights=pairs.n_sites, minlength=len(targets)).astype(np.int64)
    for c in np.flatnonzero(totals > targets).tolist():
        rows = np.flatnonzero(pairs.country == c)
        home = pairs.home[rows] == c
        tie = rng.hash64(key, pairs.merchant[rows], np.uint64(c))
        budget = int(targets[c])
        kept_home = _proportional(budget, pairs.n_sites[rows[home]], tie[home])
        keep[rows[home]] = kept_home
        keep[rows[~home]] = _proportional(budget - int(kept_home.sum()), pairs.n_sites[rows[~home]], tie[~home])
    return keep


ARCS_PER_BLOCK = 1 << 21  # arcs built and handed to the solver per block: bounded driver memory


def transport(
    mobile: NDArray[np.int64],
    need: NDArray[np.int64],
    home_distance_km: NDArray[np.float64],
    home: NDArray[np.int64],
    tie: Callable[[NDArray[np.intp]], NDArray[np.uint64]],
    policy: CountryAllocationRemass,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]] | None:
    """Least-distance integer transport of every mover's mobile outlets (rows) onto the
    countries' needs (columns), each cell capped at max(ceil(max_share_of_need · need),
    ceil(mobile / max_new_countries)): a min-cost flow, whose optimum is integral and sparse
    (few countries per merchant) while the cap spreads each country's need over several
    merchants. Cost = great-circle km from the merchant's home (``home_distance_km``: home
    country × column, in metres), ties by ``tie(rows)`` (one key per row and column). Arcs are
    built block by block, so memory holds the solver's arcs and one block, never a dense
    rows × columns matrix; returns the nonzero cells (row, column, flow) in row-major order."""
    from ortools.graph.python import min_cost_flow

    rows, cols = len(mobile), len(need)
    country_cap = np.ceil(policy.max_share_of_need * need)
    metres = np.rint(home_distance_km * 1000.0).astype(np.int64) * 1000
    flow = min_cost_flow.SimpleMinCostFlow()
    block_rows = max(1, ARCS_PER_BLOCK // max(cols, 1))
    blocks = []
    for lo in range(0, rows, block_rows):
        r = np.arange(lo, min(lo + block_rows, rows))
        cap = np.minimum(
            np.maximum(country_cap[None, :], np.ceil(mobile[r] / policy.max_new_countries)[:, None]), mobile[r, None]
        )
        cost = metres[home[r]] + (tie(r) % np.uint64(1000)).astype(np.int64)
        first = flow.add_arcs_with_capacity_and_unit_cost(
            np.repeat(r, cols), rows + np.tile(np.arange(cols), len(r)), cap.astype(np.int64).ravel(), cost.ravel()
        )
        blocks.append((r, first))
    flow.set_nodes_supplies(np.arange(rows + cols), np.r_[mobile, -need])
    if flow.solve() != flow.OPTIMAL:
        return None
    out_r, out_c, out_x = [], [], []
    for r, arcs in blocks:
        x = np.asarray(flow.flows(arcs), dtype=np.int64).reshape(len(r), cols)
        rr, cc = np.nonzero(x)
        out_r.append(r[rr])
        out_c.append(cc)
        out_x.append(x[rr, cc])
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_x)


def country_distance_km(lon: NDArray[np.float64], lat: NDArray[np.float64]) -> NDArray[np.float64]:
    xyz = unit_vectors(lon, lat)
    cosine = np.clip(xyz @ xyz.T, -1.0, 1.0)
    return np.arccos(cosine) * EARTH_RADIUS_KM


def remass(
    pairs: Pairs,
    targets: NDArray[np.int64],
    distance_km: NDArray[np.float64],
    policy: CountryAllocationRemass,
    seed: int,
    iso2: NDArray[np.str_],
) -> Allocation:
    """Re-mass 1A's pairs onto ``targets`` (per country index; sums to the 1A total)."""
    n_countries = len(targets)
    total = int(pairs.n_sites.sum())
    if int(targets.sum()) != total:
        raise InternalError(Code.E_INTERNAL, f"targets sum to {int(targets.sum())}, 1A has {total} outlets")
    key = rng.stream_key(seed, "S4.remass")
    keep = retain(pairs, targets, key)
    merchants, m_index = np.unique(pairs.merchant, return_inverse=True)
    mobile_all = np.bincount(m_index, weights=pairs.n_sites - keep, minlength=len(merchants)).astype(np.int64)
    a_count = np.bincount(pairs.country, weights=pairs.n_sites, minlength=n_countries).astype(np.int64)
    need = np.maximum(targets - a_count, 0)
    movers = np.flatnonzero(mobile_all > 0)
    home_of = np.zeros(len(merchants), dtype=np.int64)
    home_of[m_index] = pairs.home
    stats: dict[str, Any] = {}
    dest_m = dest_c = dest_n = np.zeros(0, dtype=np.int64)
    if len(movers):
        open_c = np.flatnonzero(need > 0)
        mover_ids, open_u = merchants[movers], open_c.astype(np.uint64)

        def tie(rows: NDArray[np.intp]) -> NDArray[np.uint64]:
            return rng.hash64(key, mover_ids[rows][:, None], open_u[None, :])

        flows = transport(mobile_all[movers], need[open_c], distance_km[:, open_c], home_of[movers], tie, policy)
        if flows is None:
            capacity = np.minimum(
                np.maximum(np.ceil(policy.max_share_of_need * need[open_c]), 1) * len(movers), need[open_c].sum()
            )
            short = open_c[capacity < need[open_c]]
            names = ", ".join(iso2[short[:10]].tolist()) or "(cell caps too tight for the mobile outlets)"
            raise Seg1BError(
                Code.E_REMASS_INFEASIBLE,
                f"targets cannot be met from the mobile outlets; countries short of supply: {names}",
                key="country_allocation.max_share_of_need",
            )
        r, c, x = flows
        dest_m, dest_c, dest_n = movers[r], open_c[c], x
    # Final pairs: kept counts plus arrivals, per (merchant, country).
    mc = np.r_[m_index * n_countries + pairs.country, dest_m * n_countries + dest_c]
    counts = np.r_[keep, dest_n]
    cells, inverse = np.unique(mc, return_inverse=True)
    final = np.bincount(inverse, weights=counts).astype(np.int64)
    alive = final > 0
    final_m, final_c = np.divmod(cells[alive], n_countries)
    final_n = final[alive]
    moves = _moves(pairs, keep, merchants, m_index, dest_m, dest_c, dest_n, n_countries)
    final_home = home_of[final_m]
    relocated = int((pairs.n_sites - keep).sum())
    tv = int(np.abs(targets - a_count).sum()) // 2
    uniform_keep = float(np.min(np.where(a_count > 0, targets / np.maximum(a_count, 1), np.inf)))
    stats.update(
        {
            "relocated_share": round(relocated / total, 6),
            "relocated_share_minimum": round(tv / total, 6),
            "uniform_alternative_relocated_share": round(1.0 - min(1.0, uniform_keep), 6),
            "countries_over_target": int((a_count > targets).sum()),
            "countries_under_target": int((need > 0).sum()),
            **footprint(pairs.merchant, pairs.country, pairs.n_sites, pairs.home, "1a"),
            **footprint(merchants[final_m], final_c, final_n, final_home, "1b"),
        }
    )
    return Allocation(merchants[final_m], final_c, final_n, keep, moves, stats)


def _moves(
    pairs: Pairs,
    keep: NDArray[np.int64],
    merchants: NDArray[np.uint64],
    m_index: NDArray[np.int64],
    dest_m: NDArray[np.int64],
    dest_c: NDArray[np.int64],
    dest_n: NDArray[np.int64],
    n_countries: int,
) -> Moves:
    """Pair each merchant's mobile stubs (by source country, site_order) with its arrival
    slots (by destination country, slot). Both sequences are merchant-major with equal
    counts per merchant, so the k-th stub overall meets the k-th slot: the runs are the
    pieces between the union of both sequences' segment starts."""
    leave = pairs.n_sites - keep
    src = np.flatnonzero(leave > 0)
    src_len = leave[src]
    src_start = np.cumsum(src_len) - src_len
    # Arrivals continue after the stubs the merchant kept in that country (pairs are sorted).
    kept_key = m_index * n_countries + pairs.country
    dest_key = dest_m * n_countries + dest_c
    pos = np.minimum(np.searchsorted(kept_key, dest_key), max(len(kept_key) - 1, 0))
    base = (
        np.where(kept_key[pos] == dest_key, keep[pos], 0) if len(kept_key) else np.zeros(len(dest_key), dtype=np.int64)
    )
    dst_start = np.cumsum(dest_n) - dest_n
    total = int(src_len.sum())
    if total != int(dest_n.sum()):
        raise InternalError(Code.E_INTERNAL, f"{total} mobile outlets but {int(dest_n.sum())} arrival slots")
    starts = np.union1d(src_start, dst_start)
    length = np.diff(np.r_[starts, total]).astype(np.int64)
    si = np.searchsorted(src_start, starts, side="right") - 1
    di = np.searchsorted(dst_start, starts, side="right") - 1
    return Moves(
        merchants[m_index[src[si]]],
        pairs.country[src[si]],
        keep[src[si]] + 1 + starts - src_start[si],
        dest_c[di],
        base[di] + 1 + starts - dst_start[di],
        length,
    )


def _ranks(sizes: NDArray[np.int64]) -> NDArray[np.int64]:
    """0..n-1 within each run of ``np.repeat(..., sizes)``."""
    total = int(sizes.sum())
    return np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
