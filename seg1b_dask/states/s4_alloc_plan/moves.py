"""Where S4(a)'s mobile outlets go, and the run-length record of each move (DESIGN §12).

``place_mobile`` sends every merchant's mobile outlets (those its over-target countries did
not keep) onto the under-target countries' needs, in three min-cost flows (OR-Tools):

(a) **own countries**: each merchant fills what it can of the needs of the countries where
    1A already has it (nearest to its home first);
(b) **nearest countries**: the rest, aggregated per home country (a merchant larger than a
    typical country's cap on its own), by least great-circle km from the home onto the
    remaining needs. The cost depends on the home alone, so this is the exact optimum of the
    merchant-level problem, on a home × country graph;
(c) **split**: each home's flows go to its merchants by a capped transport with keyed
    costs, whose optimum is sparse (most merchants land in one or two countries).

Every cell is capped at ⌈``max_merchant_share`` · need⌉, so a country's need is spread over
several merchants: a country carried by one merchant swings with it, and a very large merchant
spread over many countries in proportion to their needs barely moves any country's share
(resampling merchants, as the B+ bootstrap does, then shifts every country alike). Each
merchant is offered a window of ``max_new_countries`` destinations; one whose window cannot
hold its outlets under the caps — only the largest — gets a wider one (counted and reported).
Arcs are built per merchant, pair and home: never a merchants × countries matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from seg1b_dask.core import rng
from seg1b_dask.errors import Code, InternalError
from seg1b_dask.policies.states import CountryAllocationRemass

UNPLACED_KM = 10**7  # the cost of leaving a mobile outlet to the next step: above any distance


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
        step = ranks(self.length)
        return (
            self.merchant[run],
            self.src_country[run],
            self.src_first[run] + step,
            self.dst_country[run],
            self.dst_first[run] + step,
        )


def no_moves() -> Moves:
    empty = np.zeros(0, dtype=np.int64)
    return Moves(np.zeros(0, dtype=np.uint64), empty, empty, empty, empty, empty)


def ranks(sizes: NDArray[np.int64]) -> NDArray[np.int64]:
    """0..n-1 within each run of ``np.repeat(..., sizes)``."""
    total = int(sizes.sum())
    return np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)


@dataclass(frozen=True)
class Mobile:
    """The outlets to place: per 1A pair its merchant (index) and country; per merchant its
    id, home country and mobile count."""

    pair_merchant: NDArray[np.int64]
    pair_country: NDArray[np.int64]
    merchant_id: NDArray[np.uint64]
    home: NDArray[np.int64]
    count: NDArray[np.int64]


@dataclass(frozen=True)
class Widened:
    """What the placement had to give up: doublings of every cell cap (too few merchants to
    meet the needs under them), homes whose split widened its caps further, merchants whose
    new countries exceed ``max_new_countries``."""

    cap_doublings: int = 0
    cap_homes: int = 0
    wide_merchants: int = 0

    def __add__(self, other: Widened) -> Widened:
        return Widened(
            self.cap_doublings + other.cap_doublings,
            self.cap_homes + other.cap_homes,
            self.wide_merchants + other.wide_merchants,
        )


@dataclass(frozen=True)
class Arrivals:
    """Arrival cells (merchant index, country, outlets), merchant-major then country."""

    merchant: NDArray[np.int64]
    country: NDArray[np.int64]
    n_sites: NDArray[np.int64]
    widened: Widened


def _solve(
    tail: NDArray[np.int64], head: NDArray[np.int64], cap: NDArray[np.int64], cost: NDArray[np.int64], supply: NDArray
) -> NDArray[np.int64] | None:
    """Flows of an integral min-cost flow, or None if no flow meets the supplies."""
    from ortools.graph.python import min_cost_flow

    solver = min_cost_flow.SimpleMinCostFlow()
    arcs = solver.add_arcs_with_capacity_and_unit_cost(tail, head, cap, cost)
    solver.set_nodes_supplies(np.arange(len(supply)), supply)
    if solver.solve() != solver.OPTIMAL:
        return None
    return np.asarray(solver.flows(arcs), dtype=np.int64)


def _cell_cap(
    need: NDArray[np.int64], mobile: NDArray[np.int64], policy: CountryAllocationRemass, widen: int = 0
) -> NDArray:
    """Caps of cells (merchant rows × country columns, broadcast): ⌈max_merchant_share · need⌉,
    doubled ``widen`` times where the merchants at hand cannot meet the needs under it."""
    by_need = np.maximum(np.ceil(policy.max_merchant_share * need), 1).astype(np.int64) << widen
    return np.minimum(by_need[None, :], mobile[:, None])


def _own_countries(
    mobile: Mobile, need: NDArray[np.int64], distance_km: NDArray[np.float64], policy: CountryAllocationRemass, key
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """(a): cells (merchant, country, outlets) into the merchant's own under-target countries."""
    rows = np.flatnonzero((need[mobile.pair_country] > 0) & (mobile.count[mobile.pair_merchant] > 0))
    if not len(rows):
        return (np.zeros(0, np.int64),) * 3
    m, c = mobile.pair_merchant[rows], mobile.pair_country[rows]
    movers, m_node = np.unique(m, return_inverse=True)
    open_c, c_node = np.unique(c, return_inverse=True)
    n_m, n_c = len(movers), len(open_c)
    sink = n_m + n_c
    cap = np.minimum(np.maximum(np.ceil(policy.max_merchant_share * need[c]), 1).astype(np.int64), mobile.count[m])
    tie = (rng.hash64(key, mobile.merchant_id[m], c.astype(np.uint64)) % np.uint64(1000)).astype(np.int64)
    cost = np.rint(distance_km[mobile.home[m], c]).astype(np.int64) * 1000 + tie
    supply = np.zeros(sink + 1, dtype=np.int64)
    supply[:n_m] = mobile.count[movers]
    supply[sink] = -int(supply.sum())
    tail = np.r_[m_node, n_m + np.arange(n_c), np.arange(n_m)]
    head = np.r_[n_m + c_node, np.full(n_c + n_m, sink)]
    x = _solve(
        tail,
        head,
        np.r_[cap, need[open_c], mobile.count[movers]],
        np.r_[cost, np.zeros(n_c, np.int64), np.full(n_m, UNPLACED_KM * 1000, np.int64)],
        supply,
    )
    if x is None:
        raise InternalError(Code.E_INTERNAL, "the own-country flow has a free outlet for every mobile one")
    sent = x[: len(rows)] > 0
    return movers[m_node[sent]], c[sent], x[: len(rows)][sent]


def _groups(home: NDArray[np.int64], count: NDArray[np.int64], need: NDArray[np.int64], policy) -> NDArray:
    """The flow's sources: merchants of one home together, but a merchant larger than a
    typical country's cap alone (a home's column caps cannot see that one merchant carries
    most of it). Returns a group label per merchant."""
    open_cap = _cell_cap(need[need > 0], np.asarray([np.iinfo(np.int64).max]), policy)[0]
    large = count > np.median(open_cap) if len(open_cap) else np.zeros(len(count), dtype=bool)
    return np.where(large, len(need) + np.arange(len(count)), home)


def _home_flows(
    group_of: NDArray[np.int64],
    home: NDArray[np.int64],
    count: NDArray[np.int64],
    need: NDArray[np.int64],
    distance_km: NDArray[np.float64],
    policy: CountryAllocationRemass,
    key,
) -> tuple[NDArray[np.int64], int]:
    """(b): outlets per (group, country) by least km from the group's home, each arc capped
    at what its merchants' cells can carry; a groups × countries matrix, and how many times
    the caps had to double for the needs to be met (uncapped, they always are)."""
    labels, hub_of = np.unique(group_of, return_inverse=True)
    hubs = np.zeros(len(labels), dtype=np.int64)
    hubs[hub_of] = home
    open_c = np.flatnonzero(need > 0)
    tie = rng.hash64(key, labels[:, None].astype(np.uint64), open_c[None, :].astype(np.uint64)) % np.uint64(1000)
    cost = np.rint(distance_km[np.ix_(hubs, open_c)]).astype(np.int64) * 1000 + tie.astype(np.int64)
    n_h = len(hubs)
    supply = np.r_[np.bincount(hub_of, weights=count, minlength=n_h).astype(np.int64), -need[open_c]]
    tail = np.repeat(np.arange(n_h), len(open_c))
    head = n_h + np.tile(np.arange(len(open_c)), n_h)
    for widen in range(64):
        capacity = np.zeros((n_h, len(open_c)), dtype=np.int64)
        for h in range(n_h):
            capacity[h] = _cell_cap(need[open_c], count[hub_of == h], policy, widen).sum(axis=0)
        x = _solve(tail, head, capacity.ravel(), cost.ravel(), supply)
        if x is not None:
            out = np.zeros((n_h, len(need)), dtype=np.int64)
            out[:, open_c] = x.reshape(n_h, len(open_c))
            return out, widen
    raise InternalError(Code.E_INTERNAL, "uncapped, the mobile outlets always meet the needs")


def _split(
    merchant_id: NDArray[np.uint64],
    count: NDArray[np.int64],
    flow: NDArray[np.int64],
    need: NDArray[np.int64],
    distance_from_home: NDArray[np.float64],
    policy: CountryAllocationRemass,
    key: np.uint64,
    widen: int,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], Widened]:
    """(c): one home's country flows (``flow``, its columns in order of distance from the
    home) over its merchants (rows with ``count`` outlets). Each merchant is offered a window
    of ``max_new_countries`` consecutive destinations from a keyed start, so no merchant goes
    to more, unless its own outlets do not fit in that many; keyed costs make the optimum
    sparse. Where no split exists the home's caps widen (doubling), then its windows, until
    one does: both are reported."""
    cols = np.flatnonzero(flow)
    cols = cols[np.argsort(distance_from_home[cols], kind="stable")]
    rows, n_cols = len(count), len(cols)
    cap = _cell_cap(need[cols], count, policy, widen)
    tie = rng.hash64(key, merchant_id[:, None], cols[None, :].astype(np.uint64)) % np.uint64(1 << 20)
    start = (rng.hash64(key, merchant_id, np.uint64(n_cols)) % np.uint64(max(n_cols, 1))).astype(np.int64)
    offset = (np.arange(n_cols)[None, :] - start[:, None]) % max(n_cols, 1)  # position in the merchant's window
    supply = np.r_[count, -flow[cols]]
    # A merchant whose window cannot hold its outlets (a very large one) gets the shortest
    # window that can; every other merchant keeps the limit.
    by_position = np.take_along_axis(np.minimum(cap, flow[cols][None, :]), np.argsort(offset, axis=1), axis=1)
    fits = np.cumsum(by_position, axis=1) >= count[:, None]
    window = np.maximum(policy.max_new_countries, np.argmax(fits, axis=1) + 1)[:, None]
    for widened in range(64):
        r, c = np.nonzero(offset < window)
        x = _solve(r, rows + c, cap[r, c], tie[r, c].astype(np.int64), supply)
        if x is not None:
            sent = x > 0
            wide = int((np.bincount(r[sent], minlength=rows) > policy.max_new_countries).sum())
            return r[sent], cols[c[sent]], x[sent], Widened(cap_homes=int(widened > 0), wide_merchants=wide)
        if (cap < count[:, None]).any():  # the caps meet jointly what no column alone shows: widen them
            cap = np.minimum(cap * 2, count[:, None])
        else:
            window = window * 2
    raise InternalError(Code.E_INTERNAL, "a home's flows found no split over its merchants")


def place_mobile(
    mobile: Mobile,
    need: NDArray[np.int64],
    distance_km: NDArray[np.float64],
    policy: CountryAllocationRemass,
    key: np.uint64,
) -> Arrivals:
    """Every mobile outlet onto the needs (which it sums to): (a), then (b) and (c)."""
    if int(mobile.count.sum()) != int(need.sum()):
        raise InternalError(Code.E_INTERNAL, f"{int(mobile.count.sum())} mobile outlets for {int(need.sum())} needed")
    own_m, own_c, own_n = _own_countries(mobile, need, distance_km, policy, key)
    left = mobile.count - np.bincount(own_m, weights=own_n, minlength=len(mobile.count)).astype(np.int64)
    need_left = need - np.bincount(own_c, weights=own_n, minlength=len(need)).astype(np.int64)
    parts = [(own_m, own_c, own_n)]
    widened = Widened()
    movers = np.flatnonzero(left > 0)
    if len(movers):
        group_of = _groups(mobile.home[movers], left[movers], need_left, policy)
        by_group, widen = _home_flows(group_of, mobile.home[movers], left[movers], need_left, distance_km, policy, key)
        widened += Widened(cap_doublings=widen)
        _, hub_of = np.unique(group_of, return_inverse=True)
        for h in range(len(by_group)):
            rows = movers[hub_of == h]
            home = mobile.home[rows[0]]
            r, c, n, wide = _split(
                mobile.merchant_id[rows], left[rows], by_group[h], need_left, distance_km[home], policy, key, widen
            )
            parts.append((rows[r], c, n))
            widened += wide
    m, c, n = (np.concatenate([p[i] for p in parts]) for i in range(3))
    n_countries = len(need)
    cells, inverse = np.unique(m * n_countries + c, return_inverse=True)  # merchant-major, then country
    summed = np.bincount(inverse, weights=n).astype(np.int64)
    cell_m, cell_c = np.divmod(cells, n_countries)
    return Arrivals(cell_m, cell_c, summed, widened)


def pair_moves(
    pair_country: NDArray[np.int64],
    pair_sites: NDArray[np.int64],
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
    leave = pair_sites - keep
    src = np.flatnonzero(leave > 0)
    src_len = leave[src]
    src_start = np.cumsum(src_len) - src_len
    # Arrivals continue after the stubs the merchant kept in that country (pairs are sorted).
    kept_key = m_index * n_countries + pair_country
    dest_key = dest_m * n_countries + dest_c
    pos = np.minimum(np.searchsorted(kept_key, dest_key), max(len(kept_key) - 1, 0))
    base = (
        np.where(kept_key[pos] == dest_key, keep[pos], 0) if len(kept_key) else np.zeros(len(dest_key), dtype=np.int64)
    )
    dst_start = np.cumsum(dest_n) - dest_n
    total = int(src_len.sum())
    if total != int(dest_n.sum()):
        raise InternalError(Code.E_INTERNAL, f"{total} mobile outlets but {int(dest_n.sum())} arrival slots")
    if total == 0:
        return no_moves()
    starts = np.union1d(src_start, dst_start)
    length = np.diff(np.r_[starts, total]).astype(np.int64)
    si = np.searchsorted(src_start, starts, side="right") - 1
    di = np.searchsorted(dst_start, starts, side="right") - 1
    return Moves(
        merchants[m_index[src[si]]],
        pair_country[src[si]],
        keep[src[si]] + 1 + starts - src_start[si],
        dest_c[di],
        base[di] + 1 + starts - dst_start[di],
        length,
    )
