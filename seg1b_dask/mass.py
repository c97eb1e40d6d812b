"""The governed country mass vector (DESIGN §5, S2 ``blend_v2``): the share of all sites
each eligible country should hold. A pure function of the country table and the policy.

Base shares ∝ population ** exponent, tempered by the concentration penalty and mixed with
a uniform share; then, in a fixed order and repeated until nothing moves by more than the
tolerance: region floors, the southern floor (southern parts of countries scaled up, the
rest down), the soft cap, the hard cap (water-filling) and the top-k caps. Every step is a
deterministic array operation, so the vector is identical wherever it is computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .errors import Code, Seg1BError
from .metrics import TOPK_FRACTIONS
from .policies import CountryAllocationRemass, CountryMassPolicy


@dataclass(frozen=True)
class MassVector:
    share: NDArray[np.float64]  # per country (0 where ineligible), sums to 1
    base_share: NDArray[np.float64]
    iterations: int


def _raise_to(share: NDArray[np.float64], group: NDArray[np.bool_], floor: float) -> NDArray[np.float64]:
    """Scale ``group`` up to ``floor`` of the total and everything else down to match."""
    inside = float(share[group].sum())
    if inside >= floor or inside == 0.0:
        return share
    out = share.copy()
    out[group] *= floor / inside
    out[~group] *= (1.0 - floor) / (1.0 - inside)
    return out


def _southern_floor(share: NDArray[np.float64], south: NDArray[np.float64], floor: float) -> NDArray[np.float64]:
    """Scale each country's southern part by a and its northern part by b so the southern
    total reaches ``floor`` (a country straddling the equator moves by its own mix)."""
    total = float((share * south).sum())
    if total >= floor or total == 0.0:
        return share
    a, b = floor / total, (1.0 - floor) / (1.0 - total)
    return share * (a * south + b * (1.0 - south))


def _water_fill(
    share: NDArray[np.float64], cap: NDArray[np.float64], eligible: NDArray[np.bool_]
) -> NDArray[np.float64]:
    """Cap every share at its ``cap``, handing the excess to the uncapped in proportion."""
    out = share.copy()
    for _ in range(len(out)):
        over = out > cap * (1.0 + 1e-12)
        if not over.any():
            break
        excess = float((out[over] - cap[over]).sum())
        out[over] = cap[over]
        room = eligible & (out < cap)
        out[room] += excess * out[room] / out[room].sum()
    return out


def _soft_cap(share: NDArray[np.float64], soft: float, keep: float, eligible: NDArray[np.bool_]) -> NDArray[np.float64]:
    over = share > soft
    if not over.any() or keep >= 1.0:
        return share
    out = share.copy()
    excess = float(((out[over] - soft) * (1.0 - keep)).sum())
    out[over] = soft + (out[over] - soft) * keep
    rest = eligible & ~over
    out[rest] += excess * out[rest] / out[rest].sum()
    return out


def _topk_cap(share: NDArray[np.float64], k: int, cap: float, eligible: NDArray[np.bool_]) -> NDArray[np.float64]:
    order = np.lexsort((np.arange(len(share)), -share))
    top = order[:k]
    inside = float(share[top].sum())
    if inside <= cap:
        return share
    out = share.copy()
    rest = eligible.copy()
    rest[top] = False
    out[top] *= cap / inside
    out[rest] *= (1.0 - cap) / float(share[rest].sum())
    return out


def govern(
    base: NDArray[np.float64],
    region: NDArray[np.str_],
    south: NDArray[np.float64],
    eligible: NDArray[np.bool_],
    population: NDArray[np.float64],
    policy: CountryMassPolicy,
) -> MassVector:
    """Apply the policy's floors and caps to ``base`` (any non-negative vector) until
    convergence. ``south`` is each country's southern fraction of its tile mass. The hard
    cap of a country is the smaller of ``country_cap_share_hard`` and
    ``max_population_share_multiple`` × its share of the eligible population (no island of
    60 000 people holds 1.6 % of the world's outlets)."""
    n = int(eligible.sum())
    if n == 0 or policy.country_cap_share_hard * n < 1.0:
        raise Seg1BError(
            Code.E_MASS_INFEASIBLE,
            f"a hard cap of {policy.country_cap_share_hard} over {n} eligible countries cannot hold all mass",
            key="country_mass.country_cap_share_hard",
        )
    raw = np.where(eligible, np.maximum(base, 0.0), 0.0)
    if raw.sum() == 0.0:
        raw = eligible.astype(np.float64)
    raw = raw ** (1.0 - policy.concentration_penalty)
    share = (1.0 - policy.uniform_mix) * raw / raw.sum() + policy.uniform_mix * eligible / n
    base_share = share.copy()
    pop_share = np.where(eligible, population, 0.0) / max(float(np.where(eligible, population, 0.0).sum()), 1.0)
    cap = np.full(len(share), policy.country_cap_share_hard)
    if policy.max_population_share_multiple > 0:
        cap = np.minimum(cap, policy.max_population_share_multiple * pop_share)
    topk = {name: max(1, math.ceil(round(f * n, 9))) for name, f in TOPK_FRACTIONS.items()}
    for iteration in range(1, policy.max_iterations + 1):
        before = share
        for name, floor in policy.region_floor_share.items():
            share = _raise_to(share, eligible & (region == name), floor)
        share = _southern_floor(share, south, policy.southern_floor_share)
        share = _soft_cap(share, policy.country_cap_share_soft, policy.soft_cap_keep, eligible)
        share = _water_fill(share, cap, eligible)
        for name, cap in policy.topk_cap_share.model_dump().items():
            share = _topk_cap(share, topk[name], cap, eligible)
        if float(np.abs(share - before).max()) <= policy.tolerance:
            return MassVector(share / share.sum(), base_share, iteration)
    raise Seg1BError(
        Code.E_MASS_INFEASIBLE,
        f"floors and caps did not converge in {policy.max_iterations} iterations (they contradict each other)",
        key="country_mass",
    )


def integer_targets(
    share: NDArray[np.float64], total: int, minimum: int, eligible: NDArray[np.bool_]
) -> NDArray[np.int64]:
    """Integer site counts per country summing to ``total``: ``minimum`` for every eligible
    country, the rest by largest remainder of the shares (ties to the lower index)."""
    n = int(eligible.sum())
    minimum = minimum if minimum * n <= total else 0
    floor_total = minimum * n
    quota = share * (total - floor_total)
    counts = np.floor(quota).astype(np.int64)
    short = total - floor_total - int(counts.sum())
    candidates = np.flatnonzero(eligible)
    order = candidates[np.lexsort((candidates, -(quota - counts)[candidates]))]
    counts[order[:short]] += 1
    return counts + np.where(eligible, minimum, 0)


@dataclass(frozen=True)
class CountryVector:
    """S2's ``country_mass`` table as arrays, one row per country in code order."""

    share: NDArray[np.float64]  # the governed mass vector (or the tile mass shares)
    eligible: NDArray[np.bool_]
    region: NDArray[np.str_]
    south: NDArray[np.float64]  # southern fraction of the country's tile mass
    population: NDArray[np.float64]

    @classmethod
    def from_columns(cls, columns: dict[str, list]) -> CountryVector:
        return cls(
            np.asarray(columns["mass_share"], dtype=np.float64),
            np.asarray(columns["eligible"], dtype=bool),
            np.asarray(columns["region"], dtype="U16"),
            np.asarray(columns["south_fraction"], dtype=np.float64),
            np.asarray(columns["population"], dtype=np.float64),
        )


def remass_targets(
    a_count: NDArray[np.int64],
    vector: CountryVector,
    mode: CountryAllocationRemass,
    country_mass: CountryMassPolicy | None,
) -> NDArray[np.int64]:
    """S4(a)'s integer site targets per country: the S2 vector mixed with 1A's own shares
    by ``fidelity_weight`` (governed again by ``country_mass`` when S2 governs one), at
    least ``min_sites_per_country`` per eligible country, summing to the 1A total. S4 and
    ``seg1b feasibility`` both call this, so a prediction is the run's own arithmetic."""
    total = int(a_count.sum())
    share = vector.share
    if mode.fidelity_weight > 0:
        share = (1.0 - mode.fidelity_weight) * share + mode.fidelity_weight * a_count / total
        if country_mass is not None:  # the mixed vector obeys the same floors and caps
            share = govern(share, vector.region, vector.south, vector.eligible, vector.population, country_mass).share
    return integer_targets(share, total, mode.min_sites_per_country, vector.eligible)
