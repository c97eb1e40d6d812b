"""S4(b) tile allocation: integer site counts per (merchant, country, tile).

``largest_remainder`` (legacy): each tile within 1 of its quota, ties in the remainder to
the tie key — ``tile_id`` reproduces the old stripes (with row-constant weights every
merchant gets the same run of cells along one raster row), ``keyed`` is a per-merchant
hash. ``systematic``: systematic sampling along the tiles in ``tile_id`` order from a
keyed offset per (merchant, country) — also within 1 of every quota, with no ties at all,
and different merchants land on different tiles. ``max_tile_share`` caps any tile's share
of a pair. ``min_sites_per_tile`` works across merchants: a tile left with fewer sites than
that hands them to the nearest tile of the country that has enough (no lone sites).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from ... import rng
from ...grid import Grid
from ...metrics import unit_vectors
from ...policies import TileAllocation

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


def _cap(
    counts: NDArray[np.int64], remainder: NDArray[np.uint64], total: np.uint64, n: int, share: float, tie_key: TieKey
) -> NDArray[np.int64]:
    """No tile above ``share`` of the pair where the country has room: the excess goes to
    the next tiles by remainder, then tie key."""
    cap = max(int(np.ceil(share * n)), int(np.ceil(n / len(counts))))
    excess = int(np.maximum(counts - cap, 0).sum())
    if not excess:
        return counts
    counts = np.minimum(counts, cap)
    rank = np.lexsort((tie_key(np.arange(len(counts), dtype=np.intp)), total - remainder))
    while excess:
        room = rank[counts[rank] < cap][:excess]
        counts[room] += 1
        excess -= len(room)
    return counts


def largest_remainder(n: int, weight: NDArray[np.uint64], tie_key: TieKey, max_tile_share: float) -> NDArray[np.int64]:
    """Largest remainder of ``n`` over integer weights, exact in integer arithmetic."""
    total = np.uint64(int(weight.sum(dtype=np.uint64)))
    product = np.uint64(n) * weight
    counts = (product // total).astype(np.int64)
    remainder = product % total
    counts[_best(n - int(counts.sum()), remainder, tie_key)] += 1
    return counts if max_tile_share >= 1.0 else _cap(counts, remainder, total, n, max_tile_share, tie_key)


def systematic(
    n: int, weight: NDArray[np.uint64], offset: float, tie_key: TieKey, max_tile_share: float
) -> NDArray[np.int64]:
    """Systematic sampling of ``n`` points over the cumulative integer weights from
    ``offset`` ∈ [0, 1): count_i = #{k : offset·W + k·W ∈ [n·C_{i-1}, n·C_i)}, exact."""
    shift = max(0, int(weight.sum(dtype=np.uint64)).bit_length() + max(n, 1).bit_length() - 62)
    w = (weight >> np.uint64(shift)).astype(np.int64)
    if int(w.sum()) == 0:
        w = (weight > 0).astype(np.int64)
    total = int(w.sum())
    start = int(offset * total)
    upper = np.cumsum(w) * n
    below = np.clip(-((start - upper) // total), 0, n)  # ceil((n·C_i − start) / W)
    counts = np.diff(np.r_[0, below]).astype(np.int64)
    if max_tile_share >= 1.0:
        return counts
    product = (w * n) % total
    return _cap(counts, product.astype(np.uint64), np.uint64(total), n, max_tile_share, tie_key)


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
