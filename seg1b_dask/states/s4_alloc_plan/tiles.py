"""S4(b) tile allocation: integer site counts per (merchant, country, tile).

``largest_remainder`` (legacy): each tile within 1 of its quota, ties in the remainder to
the tie key — ``tile_id`` reproduces the old stripes (with row-constant weights every
merchant gets the same run of cells along one raster row), ``keyed`` is a per-merchant
hash. ``systematic``: systematic sampling along the tiles in ``tile_id`` order from a
keyed offset per (merchant, country) — also within 1 of every quota, with no ties at all,
and different merchants land on different tiles. ``max_tile_share`` caps any tile's share
of a pair. ``min_sites_per_tile`` works across merchants: a tile left with fewer sites than
that hands them to the nearest tile of the country that has enough (no lone sites).

``allocate_country`` does all of a country's pairs in one pass over its tiles — cost
O(tiles log tiles + sites log tiles), not pairs × tiles — and gives exactly what
``allocate_pair`` gives pair by pair; a pair the cap would touch is capped from its own runs
with the tiles ranked once per pair size (systematic), and keyed largest remainder ties take
the pair-by-pair path, which costs O(tiles) for that pair.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from seg1b_dask.core import rng
from seg1b_dask.core.grid import Grid
from seg1b_dask.core.metrics import unit_vectors
from seg1b_dask.errors import Code, InternalError
from seg1b_dask.policies.states import TileAllocation

TieKey = Callable[[NDArray[np.intp]], NDArray[np.uint64]]


def _best(r: int, remainder: NDArray[np.uint64], tie_key: TieKey) -> NDArray[np.intp]:
    """Indices of the ``r`` best tiles by (remainder desc, tie key asc) in O(N): only tiles
    at the threshold remainder need tie keys."""
    if r <= 0:
        return np.zeros(0, dtype=np.intp)
    kth = np.partition(remainder, len(remainder) - r)[len(remainder) - r]
    above = np.flatnonzero(remainder > kth)
    at = np.flatnonzero(remainder == kth)
    need = r - len(above)
    if need < len(at):
        at = at[np.argpartition(tie_key(at), need - 1)[:need]]
    return np.concatenate([above, at])


def _cap(counts: NDArray[np.int64], ranking: _Ranking, tie_key: TieKey, n: int, share: float) -> NDArray[np.int64]:
    """No tile above ``share`` of the pair where the country has room: the excess goes to
    the next tiles by remainder (``ranking``), then tie key."""
    cap = max(int(np.ceil(share * n)), int(np.ceil(n / len(counts))))
    excess = int(np.maximum(counts - cap, 0).sum())
    if not excess:
        return counts
    counts = np.minimum(counts, cap)
    while excess:
        # The first ``excess`` tiles with room, in rank order, lie among the first
        # ``excess + full`` ranks: only those are ranked (and keyed), not every tile.
        rank = ranking.first(tie_key, excess + int((counts >= cap).sum()))
        room = rank[counts[rank] < cap][:excess]
        counts[room] += 1
        excess -= len(room)
    return counts


class _Ranking:
    """Tiles by (``behind`` asc, tie key asc), for one pair or for every pair of one size
    (they share ``behind``): sorted once when first asked, then each pair keys and sorts
    only its first ranks and the ties at the last of them."""

    def __init__(self, behind: NDArray[np.uint64]) -> None:
        self.behind = behind

    @functools.cached_property
    def _order(self) -> tuple[NDArray[np.intp], NDArray[np.uint64]]:
        order = np.argsort(self.behind, kind="stable")
        return order, self.behind[order]

    def first(self, tie_key: TieKey, k: int) -> NDArray[np.intp]:
        """The ``k`` first tiles, in rank order."""
        if k < len(self.behind):
            order, ascending = self._order
            idx = np.sort(order[: np.searchsorted(ascending, ascending[k - 1], side="right")])
        else:
            idx = np.arange(len(self.behind), dtype=np.intp)
        return idx[np.lexsort((tie_key(idx), self.behind[idx]))][:k]


def largest_remainder(n: int, weight: NDArray[np.uint64], tie_key: TieKey, max_tile_share: float) -> NDArray[np.int64]:
    """Largest remainder of ``n`` over integer weights, exact in integer arithmetic."""
    total = np.uint64(int(weight.sum(dtype=np.uint64)))
    product = np.uint64(n) * weight
    counts = (product // total).astype(np.int64)
    remainder = product % total
    counts[_best(n - int(counts.sum()), remainder, tie_key)] += 1
    if max_tile_share >= 1.0:
        return counts
    return _cap(counts, _Ranking(total - remainder), tie_key, n, max_tile_share)


def systematic(
    n: int, weight: NDArray[np.uint64], offset: float, tie_key: TieKey, max_tile_share: float
) -> NDArray[np.int64]:
    """Systematic sampling of ``n`` points over the cumulative integer weights from
    ``offset`` ∈ [0, 1): count_i = #{k : offset·W + k·W ∈ [n·C_{i-1}, n·C_i)}, exact."""
    w, total = _scaled_weights(weight, n)
    start = int(offset * total)
    upper = np.cumsum(w) * n
    below = np.clip(-((start - upper) // total), 0, n)  # ceil((n·C_i − start) / W)
    counts = np.diff(np.r_[0, below]).astype(np.int64)
    if max_tile_share >= 1.0:
        return counts
    return _cap(counts, _Ranking(_behind(w, total, n)), tie_key, n, max_tile_share)


def _scaled_weights(weight: NDArray[np.uint64], n: int) -> tuple[NDArray[np.int64], int]:
    """The weights shifted right until n times their total fits 62 bits (exact systematic
    sampling in int64), and their total."""
    shift = max(0, int(weight.sum(dtype=np.uint64)).bit_length() + max(n, 1).bit_length() - 62)
    w = (weight >> np.uint64(shift)).astype(np.int64)
    if int(w.sum()) == 0:
        w = (weight > 0).astype(np.int64)
    return w, int(w.sum())


def _behind(w: NDArray[np.int64], total: int, n: int) -> NDArray[np.uint64]:
    """How far each tile's remainder n·w mod W falls short of W: the cap's ranking, ascending."""
    return np.uint64(total) - ((w * n) % total).astype(np.uint64)


def tie_key_for(policy: TileAllocation, key: np.uint64, merchant: np.uint64, tiles: NDArray[np.int64]) -> TieKey:
    """``tile_id`` ties (legacy) or a per-merchant hash of the tile (keyed)."""
    if policy.tie_break == "tile_id":
        return lambda idx: tiles[idx].astype(np.uint64)
    return lambda idx: rng.hash64(key, merchant, tiles[idx])


def allocate_pair(
    policy: TileAllocation,
    n: int,
    weight: NDArray[np.uint64],
    tiles: NDArray[np.int64],
    key: np.uint64,
    merchant: np.uint64,
    country_code: np.uint64,
) -> NDArray[np.int64]:
    tie_key = tie_key_for(policy, key, merchant, tiles)
    if policy.method == "largest_remainder":
        return largest_remainder(n, weight, tie_key, policy.max_tile_share)
    offset = float(rng.uniform(key, merchant, country_code, np.uint64(0)))
    return systematic(n, weight, offset, tie_key, policy.max_tile_share)


def no_lone_tiles(
    tile: NDArray[np.int64],
    n_sites: NDArray[np.int64],
    minimum: int,
    grid: Grid,
    country_tiles: NDArray[np.int64],
    country_weight: NDArray[np.uint64],
) -> tuple[NDArray[np.int64], int]:
    """Within one country: move the sites of every tile holding fewer than ``minimum`` (of
    all merchants) to the nearest tile holding at least that many — or, if none does, to the
    tile holding most (ties: larger weight, then lower tile_id). Returns the new tile of
    every plan row and the number of sites moved. ``country_tiles`` (ascending) and
    ``country_weight`` are the country's tiles and weights."""
    if minimum <= 1 or len(tile) == 0:
        return tile, 0
    tiles, inverse = np.unique(tile, return_inverse=True)
    load = np.bincount(inverse, weights=n_sites).astype(np.int64)
    full = load >= minimum
    if full.all():
        return tile, 0
    if not full.any():
        weights = country_weight[np.searchsorted(country_tiles, tiles)].astype(np.float64)
        target = np.full(len(tiles), np.lexsort((tiles, -weights, -load))[0])
    else:
        row, col = np.divmod(tiles, grid.ncols)
        lat = grid.row_centre_lat(row)
        lon = -180.0 + (col + 0.5) * grid.deg
        xyz = unit_vectors(lon, lat)
        full_idx = np.flatnonzero(full)
        _, nearest = cKDTree(xyz[full_idx]).query(xyz)
        target = np.where(full, np.arange(len(tiles)), full_idx[nearest])
    moved = int(load[~full].sum())
    return tiles[target[inverse]], moved


def _runs(pair: NDArray[np.int64], tile: NDArray[np.int64]) -> tuple[NDArray[np.int64], ...]:
    """Run-length (pair, tile index, count) of per-site tile indices sorted by (pair, tile)."""
    first = np.flatnonzero(np.r_[True, (pair[1:] != pair[:-1]) | (tile[1:] != tile[:-1])])
    return pair[first], tile[first], np.diff(np.r_[first, len(pair)])


def _systematic_runs(
    n: NDArray[np.int64], offset: NDArray[np.float64], weight: NDArray[np.uint64]
) -> tuple[NDArray[np.int64], ...]:
    """``systematic`` for every pair at once: site k of a pair sits at x = start + k·W on the
    cumulative weights, in tile #{j : n·C_j ≤ x} = #{j : C_j ≤ ⌊x / n⌋} (C integer)."""
    total_bits = int(weight.sum(dtype=np.uint64)).bit_length()
    n_bits = np.asarray([int(v).bit_length() for v in np.maximum(n, 1)], dtype=np.int64)
    shift = np.maximum(0, total_bits + n_bits - 62)
    out = []
    for s in np.unique(shift).tolist():
        pairs = np.flatnonzero(shift == s)
        w = (weight >> np.uint64(s)).astype(np.int64)
        if int(w.sum()) == 0:
            w = (weight > 0).astype(np.int64)
        cumulative = np.cumsum(w)
        total = int(cumulative[-1])
        start = (offset[pairs] * total).astype(np.int64)
        sizes = n[pairs]
        pair = np.repeat(pairs, sizes)
        k = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        x = np.repeat(start, sizes) + k * total
        tile = np.searchsorted(cumulative, x // np.repeat(sizes, sizes), side="right")
        out.append((pair, tile))
    pair = np.concatenate([p for p, _ in out])
    tile = np.concatenate([t for _, t in out])
    order = np.lexsort((tile, pair)) if len(out) > 1 else np.arange(len(pair))
    return _runs(pair[order], tile[order])


def _largest_remainder_runs(
    n: NDArray[np.int64], weight: NDArray[np.uint64], tiles: NDArray[np.int64]
) -> tuple[NDArray[np.int64], ...]:
    """``largest_remainder`` with ``tile_id`` ties for every pair at once. Tiles sorted by
    (weight desc, tile asc): a tile with n·w < W has remainder n·w, so a pair's best tiles lie
    in the first (tiles with n·w ≥ W) + n of that order (≤ 2n)."""
    order = np.lexsort((tiles, ~weight))
    w_sorted = weight[order]
    total = np.uint64(int(weight.sum(dtype=np.uint64)))
    # big_p = #{w ≥ W / n_p} (w·n ≥ W ⇔ w ≥ ⌈W / n⌉), counted on ~w, which ascends
    divisor = np.maximum(n, 1).astype(np.uint64)
    threshold = total // divisor + (total % divisor != 0).astype(np.uint64)
    big = np.searchsorted(~w_sorted, ~threshold, side="right")
    length = np.minimum(len(w_sorted), big + n)
    pair = np.repeat(np.arange(len(n)), length)
    j = np.arange(int(length.sum()), dtype=np.int64) - np.repeat(np.cumsum(length) - length, length)
    product = np.repeat(n, length).astype(np.uint64) * w_sorted[j]
    floor = (product // total).astype(np.int64)
    remainder = product % total
    starts = np.cumsum(length) - length
    short = n - np.add.reduceat(floor, starts)
    rank = np.lexsort((tiles[order][j], total - remainder, pair))
    position = np.empty(len(rank), dtype=np.int64)
    position[rank] = np.arange(len(rank)) - np.repeat(starts, length)
    counts = floor + (position < np.repeat(short, length))
    keep = counts > 0
    pair, tile, counts = pair[keep], order[j[keep]], counts[keep]
    by_tile = np.lexsort((tile, pair))
    return pair[by_tile], tile[by_tile], counts[by_tile]


def allocate_country(
    policy: TileAllocation,
    n: NDArray[np.int64],
    merchants: NDArray[np.uint64],
    weight: NDArray[np.uint64],
    tiles: NDArray[np.int64],
    key: np.uint64,
    country_code: np.uint64,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Every pair of one country (``n`` sites of ``merchants``) over the country's tiles (ascending
    ``tiles`` with ``weight``): (pair index, tile index, sites), sorted by pair then tile."""
    live = np.flatnonzero(n > 0)
    if len(live) < len(n):  # a pair with no site gets no tile
        pair, tile, count = allocate_country(policy, n[live], merchants[live], weight, tiles, key, country_code)
        return live[pair], tile, count
    if len(n) == 0:
        return (np.zeros(0, dtype=np.int64),) * 3
    if int(n.max()) * int(weight.sum(dtype=np.uint64)) >= 1 << 64:
        raise InternalError(
            Code.E_INTERNAL, f"a pair of {int(n.max()):,} sites is too large for exact integer tile allocation"
        )
    if policy.method == "systematic":
        offset = rng.uniform(key, merchants, country_code, np.uint64(0))
        pair, tile, count = _systematic_runs(n, offset, weight)
    elif policy.tie_break == "tile_id":
        pair, tile, count = _largest_remainder_runs(n, weight, tiles)
    else:  # keyed ties at the threshold remainder need every tied tile's key: pair by pair
        pair, tile, count = (np.zeros(0, dtype=np.int64),) * 3
    per_pair = policy.method == "largest_remainder" and policy.tie_break == "keyed"
    if policy.max_tile_share < 1.0 or per_pair:
        cap = np.maximum(np.ceil(policy.max_tile_share * n), -(-n // len(tiles))).astype(np.int64)
        over = np.zeros(len(n), dtype=bool)
        over[pair[count > cap[pair]]] = True
        redo = np.flatnonzero(over | per_pair)
        if len(redo):
            parts = [(pair[~over[pair]], tile[~over[pair]], count[~over[pair]])]
            if policy.method == "systematic":
                parts += _capped_runs(policy, n, redo, (pair, tile, count), merchants, weight, tiles, key)
            else:
                for p in redo.tolist():
                    counts = allocate_pair(policy, int(n[p]), weight, tiles, key, merchants[p], country_code)
                    hit = np.flatnonzero(counts)
                    parts.append((np.full(len(hit), p), hit, counts[hit]))
            pair, tile, count = (np.concatenate([part[i] for part in parts]) for i in range(3))
            order = np.lexsort((tile, pair))
            pair, tile, count = pair[order], tile[order], count[order]
    return pair, tile, count.astype(np.int64)


def _capped_runs(
    policy: TileAllocation,
    n: NDArray[np.int64],
    redo: NDArray[np.intp],
    runs: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]],
    merchants: NDArray[np.uint64],
    weight: NDArray[np.uint64],
    tiles: NDArray[np.int64],
    key: np.uint64,
) -> list[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]]:
    """The pairs ``redo`` capped as ``systematic`` caps them, from their ``runs`` (sorted by
    pair): pairs of one size share the tiles' ranking, so a pair costs its runs and its first
    ranks, not a pass over every tile of the country."""
    pair, tile, count = runs
    parts: list[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]] = []
    for size in np.unique(n[redo]).tolist():
        ranking = _Ranking(_behind(*_scaled_weights(weight, size), size))
        for p in redo[n[redo] == size].tolist():
            lo, hi = np.searchsorted(pair, p), np.searchsorted(pair, p, side="right")
            counts = np.zeros(len(weight), dtype=np.int64)
            counts[tile[lo:hi]] = count[lo:hi]
            tie_key = tie_key_for(policy, key, merchants[p], tiles)
            counts = _cap(counts, ranking, tie_key, size, policy.max_tile_share)
            hit = np.flatnonzero(counts)
            parts.append((np.full(len(hit), p), hit, counts[hit]))
    return parts
