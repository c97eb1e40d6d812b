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

from seg1b_dask.core import share_lp
from seg1b_dask.core.metrics import TOPK_FRACTIONS
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.policies.states import CountryAllocationRemass, CountryMassPolicy


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
        if not room.any() or out[room].sum() == 0.0:
            break  # nowhere to go: the caps cannot hold the mass, which the final check refuses
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


def _breaches(
    share: NDArray[np.float64],
    region: NDArray[np.str_],
    south: NDArray[np.float64],
    eligible: NDArray[np.bool_],
    cap: NDArray[np.float64],
    topk: dict[str, int],
    policy: CountryMassPolicy,
) -> list[str]:
    """The limits a vector breaks (beyond rounding): the hard and per-capita caps, top-k
    caps, region and southern floors."""
    tol = 1e-9
    broken = [
        f"region_floor_share.{r}" for r, f in policy.region_floor_share.items() if share[region == r].sum() < f - tol
    ]
    if float((share * south).sum()) < policy.southern_floor_share - tol:
        broken.append("southern_floor_share")
    if (share[eligible] > cap[eligible] + tol).any():
        broken.append("country_cap_share_hard/max_population_share_multiple")
    top = np.sort(share)[::-1]
    broken += [
        f"topk_cap_share.{k}" for k, v in policy.topk_cap_share.model_dump().items() if top[: topk[k]].sum() > v + tol
    ]
    return broken


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
    if n == 0 or float(cap[eligible].sum()) < 1.0:
        raise Seg1BError(
            Code.E_MASS_INFEASIBLE,
            f"the hard caps of the {n} eligible countries hold only {float(cap[eligible].sum()):.3f} of the mass",
            key="country_mass.country_cap_share_hard",
        )
    topk = {name: max(1, math.ceil(round(f * n, 9))) for name, f in TOPK_FRACTIONS.items()}
    for iteration in range(1, policy.max_iterations + 1):
        before = share
        for name, floor in policy.region_floor_share.items():
            share = _raise_to(share, eligible & (region == name), floor)
        share = _southern_floor(share, south, policy.southern_floor_share)
        share = _soft_cap(share, policy.country_cap_share_soft, policy.soft_cap_keep, eligible)
        share = _water_fill(share, cap, eligible)
        for name, top_cap in policy.topk_cap_share.model_dump().items():
            share = _topk_cap(share, topk[name], top_cap, eligible)
        if float(np.abs(share - before).max()) <= policy.tolerance:
            share = share / share.sum()
            broken = _breaches(share, region, south, eligible, cap, topk, policy)
            if broken:  # a cycle of steps undoing each other: the settings contradict
                raise Seg1BError(
                    Code.E_MASS_INFEASIBLE,
                    f"floors and caps contradict each other: the vector settles breaking {', '.join(broken)}",
                    key="country_mass",
                )
            return MassVector(share, base_share, iteration)
    raise Seg1BError(
        Code.E_MASS_INFEASIBLE,
        f"floors and caps did not converge in {policy.max_iterations} iterations (they contradict each other)",
        key="country_mass",
    )


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


def country_targets(
    a_count: NDArray[np.int64], home_floor: NDArray[np.int64], vector: CountryVector, mode: CountryAllocationRemass
) -> NDArray[np.int64]:
    """S4(a)'s integer site targets per country, summing to the 1A total: the shares closest
    to 1A's (the least relocation) within ``mode.targets``, ties toward S2's vector. Countries
    below ``min_country_population`` people get outlets only where 1A or a home merchant has
    them; every other eligible country holds at least ``min_sites_per_country``, at least
    ``home_floor`` (the outlets its home merchants keep) and at least ``prior_floor`` × its
    share of S2's vector. S4 and ``seg1b feasibility`` both call this, so a prediction is
    the run's own arithmetic."""
    limits = mode.targets
    total = int(a_count.sum())
    eligible = vector.eligible
    holds = eligible & ((vector.population >= limits.min_country_population) | (a_count > 0) | (home_floor > 0))
    idx = np.flatnonzero(holds)
    lower = np.maximum(mode.min_sites_per_country, home_floor[idx]).astype(np.int64)
    if int(lower.sum()) > total:
        raise Seg1BError(
            Code.E_REMASS_INFEASIBLE,
            f"{len(idx)} countries with at least {mode.min_sites_per_country} outlets and the home floors need "
            f"{int(lower.sum()):,} outlets; 1A has {total:,}",
            key="country_allocation.targets.min_country_population",
        )
    population = np.where(eligible, vector.population, 0.0)
    cap = np.full(len(idx), limits.country_share_max)
    if limits.max_population_share_multiple > 0:
        cap = np.minimum(cap, limits.max_population_share_multiple * population[idx] / max(population.sum(), 1.0))
    n = len(idx)
    prior = vector.share[idx] / vector.share[idx].sum() if vector.share[idx].sum() > 0 else np.full(n, 1.0 / n)
    floor = np.maximum(lower / total, limits.prior_floor * prior)
    share_limits = share_lp.ShareLimits(
        lower=floor,
        upper=np.maximum(cap, floor),
        top_max=tuple(
            (max(1, math.ceil(round(f * n, 9))), getattr(limits.top_share_max, name))
            for name, f in TOPK_FRACTIONS.items()
        ),
        south=vector.south[idx],
        south_min=limits.southern_share_min,
        region=vector.region[idx],
        region_min=limits.region_floor_share,
    )
    found = share_lp.closest_shares(a_count[idx] / total, share_limits, prior, limits.prior_weight)
    if not found.feasible:
        raise Seg1BError(
            Code.E_REMASS_INFEASIBLE,
            f"no country vector meets the target limits ({found.message})",
            key="country_allocation.targets",
        )
    counts = np.zeros(len(a_count), dtype=np.int64)
    counts[idx] = whole_counts(found.share, total, lower)
    return counts


def whole_counts(share: NDArray[np.float64], total: int, lower: NDArray[np.int64]) -> NDArray[np.int64]:
    """Integer counts summing to ``total``, each within 1 of ``share · total`` and at least
    ``lower``: largest remainder, ties to the lower index."""
    quota = share * total
    counts = np.maximum(np.floor(quota + 1e-9).astype(np.int64), lower)
    gap = quota - counts
    short = total - int(counts.sum())
    if short > 0:
        counts[np.lexsort((np.arange(len(gap)), -gap))[:short]] += 1
    elif short < 0:
        room = np.flatnonzero(counts > lower)
        counts[room[np.lexsort((room, gap[room]))[:-short]]] -= 1
    return counts
