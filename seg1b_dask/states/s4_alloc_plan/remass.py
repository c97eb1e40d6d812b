"""S4(a) ``remass``: the governed re-mass of country totals (DESIGN §5, §12).

1. Targets (``mass.country_targets``): the integer totals closest to 1A's counts within the
   bundle's limits. Their total variation from 1A is the least any allocation hitting them
   can move: this allocation moves exactly that many outlets.
2. Retention: a country above its target keeps exactly its target of 1A outlets. Every
   merchant at home keeps ``home_sites_min`` first, then its home merchants share the rest
   by water-filling (small merchants keep all, the largest are cut to a common level, so the
   most merchants keep their home), then foreign merchants the same way — none above
   ``max_merchant_share`` of the target while others can fill it. A country at or below
   target keeps all.
3. Moves, in order of preference: (a) to the merchant's own 1A countries that are under
   target; (b) to the countries nearest the merchant's home: one min-cost flow of every home
   country's mobile outlets onto the remaining needs (cost = great-circle km between the
   countries; exact, since the cost depends on the home only); (c) each home's flows split
   over its merchants by a capped transport whose optimum is sparse. No merchant fills more
   than ``max_merchant_share`` of a country's need, unless its own limit of
   ``max_new_countries`` new countries needs more room. Merchant totals never change.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from seg1b_dask.core import rng
from seg1b_dask.core.metrics import EARTH_RADIUS_KM, unit_vectors
from seg1b_dask.errors import Code, InternalError
from seg1b_dask.io import refdata
from seg1b_dask.model.mass import CountryVector, country_targets
from seg1b_dask.policies.states import CountryAllocationRemass
from seg1b_dask.states.s4_alloc_plan import fidelity
from seg1b_dask.states.s4_alloc_plan import moves as flows
from seg1b_dask.states.s4_alloc_plan.contract import Allocation, HomeFloor, Pairs, footprint


def home_floor(pairs: Pairs, n_countries: int, home_min: int) -> NDArray[np.int64]:
    """Per country: the outlets its home merchants keep at least (``home_min`` each, fewer
    where 1A has fewer at home)."""
    at_home = pairs.country == pairs.home
    keep = np.minimum(pairs.n_sites[at_home], home_min)
    return np.bincount(pairs.country[at_home], weights=keep, minlength=n_countries).astype(np.int64)


def water_fill(budget: int, counts: NDArray[np.int64], tie: NDArray[np.uint64]) -> NDArray[np.int64]:
    """Integer water-filling of ``budget`` over ``counts`` (≤ each): everyone keeps up to a
    common level; the remainder goes one each to those above it, in ``tie`` order."""
    if budget >= int(counts.sum()):
        return counts.copy()
    values = np.sort(counts)
    below = np.cumsum(values) - values  # sum of the counts smaller than values[i]
    level_sum = below + values * (len(values) - np.arange(len(values)))  # Σ min(counts, values[i])
    i = int(np.searchsorted(level_sum, budget, side="right"))  # the level lies in [values[i-1], values[i])
    base = int(below[i]) if i < len(values) else int(values.sum())
    above = len(values) - i
    level = (budget - base) // above
    keep = np.minimum(counts, level)
    extra = budget - int(keep.sum())
    candidates = np.flatnonzero(counts > level)
    keep[candidates[np.argsort(tie[candidates], kind="stable")[:extra]]] += 1
    return keep


def retain(
    pairs: Pairs, targets: NDArray[np.int64], key: np.uint64, home_min: int, max_share: float
) -> NDArray[np.int64]:
    """Outlets each pair keeps in its 1A country: an over-target country keeps exactly its
    target — home floors, then its home merchants water-filled, then the others — with no
    merchant above ``max_share`` of the target while the country's other merchants can fill
    it (a country carried by a few merchants swings with them; past it, all merchants share
    evenly); others keep all."""
    keep = pairs.n_sites.copy()
    totals = np.bincount(pairs.country, weights=pairs.n_sites, minlength=len(targets)).astype(np.int64)
    for c in np.flatnonzero(totals > targets).tolist():
        rows = np.flatnonzero(pairs.country == c)
        tie = rng.hash64(key, pairs.merchant[rows], np.uint64(c))
        home = pairs.home[rows] == c
        floor = np.where(home, np.minimum(pairs.n_sites[rows], home_min), 0)
        budget = int(targets[c]) - int(floor.sum())
        if budget < 0:
            raise InternalError(Code.E_INTERNAL, f"country index {c}: target below its home floor")
        ceiling = max(home_min, int(np.ceil(max_share * int(targets[c]))))
        kept = floor.copy()
        for group in (home, ~home):  # within the ceiling: home merchants first
            room = np.where(group, np.maximum(np.minimum(pairs.n_sites[rows], ceiling) - kept, 0), 0)
            add = water_fill(budget, room, tie)
            kept += add
            budget -= int(add.sum())
        kept += water_fill(budget, pairs.n_sites[rows] - kept, tie)  # past it, evenly, only if needed
        keep[rows] = kept
    return keep


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
) -> Allocation:
    """Re-mass 1A's pairs onto ``targets`` (per country index; sums to the 1A total)."""
    n_countries = len(targets)
    total = int(pairs.n_sites.sum())
    if int(targets.sum()) != total:
        raise InternalError(Code.E_INTERNAL, f"targets sum to {int(targets.sum())}, 1A has {total} outlets")
    key = rng.stream_key(seed, "S4.remass")
    keep = retain(pairs, targets, key, policy.home_sites_min, policy.max_merchant_share)
    merchants, m_index = np.unique(pairs.merchant, return_inverse=True)
    mobile = np.bincount(m_index, weights=pairs.n_sites - keep, minlength=len(merchants)).astype(np.int64)
    a_count = np.bincount(pairs.country, weights=pairs.n_sites, minlength=n_countries).astype(np.int64)
    need = np.maximum(targets - a_count, 0)
    home_of = np.zeros(len(merchants), dtype=np.int64)
    home_of[m_index] = pairs.home
    arrivals = flows.place_mobile(
        flows.Mobile(m_index, pairs.country, merchants, home_of, mobile), need, distance_km, policy, key
    )
    dest_m, dest_c, dest_n = arrivals.merchant, arrivals.country, arrivals.n_sites
    # Final pairs: kept counts plus arrivals, per (merchant, country).
    cells, inverse = np.unique(
        np.r_[m_index * n_countries + pairs.country, dest_m * n_countries + dest_c], return_inverse=True
    )
    final = np.bincount(inverse, weights=np.r_[keep, dest_n]).astype(np.int64)
    del inverse  # pair-level: the driver's peak is S4(a)'s arrays alive at once
    alive = final > 0
    final_m, final_c = np.divmod(cells[alive], n_countries)
    del cells
    moves = flows.pair_moves(
        pairs.country, pairs.n_sites, keep, merchants, m_index, dest_m, dest_c, dest_n, n_countries
    )
    max_1a = int(np.bincount(m_index).max()) if len(m_index) else 0
    stats: dict[str, Any] = {
        "relocated_share": round(int((pairs.n_sites - keep).sum()) / total, 6),
        "countries_over_target": int((a_count > targets).sum()),
        "countries_under_target": int((need > 0).sum()),
        "cell_cap_doublings": arrivals.widened.cap_doublings,
        "homes_with_widened_caps": arrivals.widened.cap_homes,
        "merchants_over_new_country_limit": arrivals.widened.wide_merchants,
        **footprint(pairs.merchant, pairs.country, pairs.n_sites, pairs.home, "1a", max_1a),
        **footprint(merchants[final_m], final_c, final[alive], home_of[final_m], "1b", max_1a),
        **fidelity.merchant_figures(
            m_index, pairs.country, pairs.n_sites, pairs.home, final_m, final_c, final[alive], moves, distance_km
        ),
    }
    return Allocation(merchants[final_m], final_c, final[alive], keep, moves, stats)


_TARGETS = "retune s4_alloc_plan country_allocation.targets: "


class Remass:
    governed: ClassVar[bool] = True
    advice: ClassVar[dict[str, str]] = {
        "concentration": f"Gini/top-k: {_TARGETS}top_share_max, country_share_max, prior_floor "
        "(and s2_tile_weights country_mass.population_exponent, the shape of the prior)",
        "coverage": f"coverage: {_TARGETS}min_country_population, prior_floor",
        "region_floor": f"region floor: {_TARGETS}region_floor_share, southern_share_min",
        "footprint": "merchant footprint: retune s4_alloc_plan country_allocation.max_new_countries, "
        "max_merchant_share",
        "bootstrap": f"concentration too close to the B+ line: {_TARGETS}top_share_max; "
        "s4_alloc_plan country_allocation.max_merchant_share (fewer merchants per country)",
    }
    relocates: ClassVar[bool] = True

    def __init__(self, policy: CountryAllocationRemass) -> None:
        self.policy = policy

    def country_counts(
        self, a_count: NDArray[np.int64], home_floor: HomeFloor, vector: CountryVector
    ) -> NDArray[np.int64]:
        """The targets: closest to 1A within the policy's limits (``mass.country_targets``)."""
        return country_targets(a_count, home_floor(self.policy.home_sites_min), vector, self.policy)

    def allocate(self, pairs: Pairs, vector: CountryVector, seed: int) -> Allocation:
        n = len(vector.eligible)
        a_count = np.bincount(pairs.country, weights=pairs.n_sites, minlength=n).astype(np.int64)
        targets = self.country_counts(a_count, lambda home_min: home_floor(pairs, n, home_min), vector)
        lon, lat = refdata.country_centres()
        return remass(pairs, targets, country_distance_km(lon, lat), self.policy, seed)
