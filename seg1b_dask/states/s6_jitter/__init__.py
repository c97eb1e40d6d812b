"""S6 jitter: place each site inside its tile and inside its country polygon.

The policy mode (one file per mode behind ``modes.MODES``) proposes points inside the tile
(``uniform_v1.py``: uniform in the cell, the legacy posture; ``mixture_v3.py``: core,
secondary clusters and a bounded tail, spread by the tile's expected outlets); a proposal
outside the country, or repeating another site's coordinates, is redrawn with the next
keyed counter. Sites still pending after ``max_attempts`` (cells the border clips to a
sliver) draw uniformly inside (cell ∩ country) through its constrained triangulation:
always inside, always deterministic, still distinct.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask
import numpy as np
import shapely
from numpy.typing import NDArray

from seg1b_dask.core import rng
from seg1b_dask.core.grid import Grid
from seg1b_dask.engine.context import StateContext
from seg1b_dask.engine.execution import compute
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io import refdata
from seg1b_dask.io.datasets import SITE_TILE_ASSIGNMENT
from seg1b_dask.io.grids import SITE_JITTER, TILE_GRID
from seg1b_dask.policies.states import S6MixtureV3, S6UniformV1
from seg1b_dask.states.s6_jitter.modes import mode_of


def _distinct(lon: NDArray[np.float64], lat: NDArray[np.float64]) -> NDArray[np.bool_]:
    """False for every site whose exact coordinates repeat an earlier site's."""
    if len(lon) < 2:
        return np.ones(len(lon), dtype=bool)
    order = np.lexsort((np.arange(len(lon)), lat, lon))
    repeat = np.r_[False, (lon[order][1:] == lon[order][:-1]) & (lat[order][1:] == lat[order][:-1])]
    ok = np.ones(len(lon), dtype=bool)
    ok[order[repeat]] = False
    return ok


class _Accepted:
    """The accepted sites, kept distinct incrementally: a new point is checked against a
    sorted array of coordinate hashes (a binary search per new point and one insertion copy
    per attempt, not a lexsort of every accepted site). Where hashes meet, ``_distinct`` decides on just those sites, so
    the lowest index keeps a repeated point, as over the whole set."""

    def __init__(self) -> None:
        self.hash = np.zeros(0, dtype=np.uint64)
        self.index = np.zeros(0, dtype=np.int64)

    @staticmethod
    def _hash(lon: NDArray[np.float64], lat: NDArray[np.float64]) -> NDArray[np.uint64]:
        # + 0.0 folds -0.0 into 0.0, which compare equal
        return rng.hash64(np.uint64(0), (lon + 0.0).view(np.uint64), (lat + 0.0).view(np.uint64))

    def add(self, new: NDArray[np.int64], lon: NDArray[np.float64], lat: NDArray[np.float64]) -> NDArray[np.int64]:
        """Accept the sites ``new`` (ascending) at their points; return every site that lost its
        point to a lower index (some of ``new``, possibly some accepted before)."""
        h = self._hash(lon[new], lat[new])
        at = np.searchsorted(self.hash, h)
        meets_old = self.hash[np.minimum(at, max(len(self.hash) - 1, 0))] == h if len(self.hash) else h != h
        sorted_h = np.sort(h)
        repeated = sorted_h[1:][sorted_h[1:] == sorted_h[:-1]]
        clash = meets_old | np.isin(h, repeated)
        lost = np.zeros(0, dtype=np.int64)
        if clash.any():
            hashes = np.unique(h[clash])
            lo, hi = np.searchsorted(self.hash, hashes), np.searchsorted(self.hash, hashes, side="right")
            spans = [np.arange(a, b) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]
            old = np.concatenate(spans).astype(np.int64)
            group = np.union1d(self.index[old], new[clash])
            lost = group[~_distinct(lon[group], lat[group])]
            keep_old = ~np.isin(self.index, lost)
            self.hash, self.index = self.hash[keep_old], self.index[keep_old]
            won = ~np.isin(new, lost)
            new, h = new[won], h[won]
        order = np.argsort(h, kind="stable")
        at = np.searchsorted(self.hash, h[order])
        self.hash = np.insert(self.hash, at, h[order])
        self.index = np.insert(self.index, at, new[order])
        return lost


def place_sites(
    tile_id: NDArray[np.int64],
    key_fields: tuple[NDArray[np.uint64], ...],
    geom: shapely.Geometry,
    grid: Grid,
    key: np.uint64,
    policy: S6UniformV1 | S6MixtureV3,
    expected_sites: NDArray[np.float64] | None = None,
    total_sites: int = 0,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int16]]:
    """A point for every site inside its tile and its country, distinct from every other:
    the mode proposes, attempt after attempt with keyed counters; after ``max_attempts`` a
    uniform point of (cell ∩ country) from its triangulation, which is always inside.
    ``expected_sites`` (per site: its tile's expected outlets) and ``total_sites`` feed the
    mixture's footprint."""
    mode = mode_of(policy)
    max_attempts = mode.max_attempts
    bounds = grid.tile_bounds(tile_id)
    west, south, east, north = bounds
    propose = mode.proposer(tile_id, expected_sites, total_sites, key_fields, grid, key)
    lon = np.full(len(tile_id), np.nan)
    lat = np.full(len(tile_id), np.nan)
    attempts = np.zeros(len(tile_id), dtype=np.int16)
    pending = np.arange(len(tile_id))
    pieces: dict[int, tuple[NDArray[np.float64], NDArray[np.float64]]] = {}
    accepted = _Accepted()
    site_key = rng.hash64(key, *key_fields)  # each attempt's draws continue it with the attempt
    for attempt in range(2 * max_attempts):
        if not len(pending):
            break
        u = rng.unit(rng.extend(site_key[pending], np.uint64(2 * attempt)))
        v = rng.unit(rng.extend(site_key[pending], np.uint64(2 * attempt + 1)))
        if attempt < max_attempts:
            sub = (west[pending], south[pending], east[pending], north[pending])
            lon[pending], lat[pending] = propose(pending, sub, u, v)
        else:
            w = rng.unit(rng.extend(site_key[pending], np.uint64(1 << 20 | attempt)))
            for tile in np.unique(tile_id[pending]).tolist():
                if tile not in pieces:
                    pieces[tile] = _triangles(geom, *(b[tile_id == tile][0] for b in bounds))
                sel = tile_id[pending] == tile
                lon[pending[sel]], lat[pending[sel]] = _in_triangles(pieces[tile], w[sel], u[sel], v[sel])
        attempts[pending] = attempt + 1
        ok = (
            (lon[pending] >= west[pending])
            & (lon[pending] <= east[pending])
            & (lat[pending] >= south[pending])
            & (lat[pending] <= north[pending])
        )
        ok[ok] = shapely.contains_xy(geom, lon[pending[ok]], lat[pending[ok]])
        lon[pending[~ok]] = np.nan
        lost = accepted.add(pending[ok], lon, lat)
        lon[lost] = np.nan
        pending = np.union1d(pending[~ok], lost)
    if len(pending):
        raise Seg1BError(
            Code.E_VALIDATION_FAILED,
            f"{len(pending)} sites found no distinct point inside their tile and country",
            key=f"tile {tile_id[pending[0]]}",
        )
    return lon, lat, attempts


def _triangles(
    geom: shapely.Geometry, west: float, south: float, east: float, north: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Triangles covering (cell ∩ country) and their cumulative area shares."""
    piece = shapely.intersection(geom, shapely.box(west, south, east, north))
    tris = shapely.get_parts(shapely.constrained_delaunay_triangles(piece))
    corners = np.stack([shapely.get_coordinates(t)[:3] for t in tris]) if len(tris) else np.zeros((0, 3, 2))
    area = shapely.area(tris)
    return corners, np.cumsum(area) / area.sum()


def _in_triangles(
    pieces: tuple[NDArray[np.float64], NDArray[np.float64]],
    w: NDArray[np.float64],
    u: NDArray[np.float64],
    v: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Uniform points in the union of triangles: pick one by area with ``w``, then fold
    (u, v) into it."""
    corners, cumulative = pieces
    if len(corners) == 0:
        return np.full(len(w), np.nan), np.full(len(w), np.nan)
    k = np.minimum(np.searchsorted(cumulative, w, side="right"), len(corners) - 1)
    fold = u + v > 1.0
    u, v = np.where(fold, 1.0 - u, u), np.where(fold, 1.0 - v, v)
    a, b, c = corners[k, 0], corners[k, 1], corners[k, 2]
    point = a + u[:, None] * (b - a) + v[:, None] * (c - a)
    return point[:, 0], point[:, 1]


def _expected_sites(folders: dict[str, Path], country_id: int, tile: NDArray[np.int64]) -> NDArray[np.float64]:
    """Each site's tile's expected outlets: the country's outlets × the tile's share of the
    country's tile weight (people), a function of geography, not of the draw."""
    tiles, weight = TILE_GRID.country_cells(folders["tile_grid"], folders["tile_weights"], country_id)
    share = weight.astype(np.float64) / float(weight.sum(dtype=np.uint64))
    pos = np.minimum(np.searchsorted(tiles, tile), len(tiles) - 1)
    return np.where(tiles[pos] == tile, share[pos], 0.0) * len(tile)


def _batch_task(
    folders: dict[str, Path],
    countries: list[str],
    grid: Grid,
    seed: int,
    policy: S6UniformV1 | S6MixtureV3,
    total_sites: int,
) -> dict[str, NDArray[Any]]:
    """Points of a batch of countries, in canonical order (country, merchant, site_order)."""
    ref = refdata.countries()
    key = rng.stream_key(seed, "S6.jitter")
    cols: dict[str, list[NDArray[Any]]] = {name: [] for name in SITE_JITTER.ARRAYS}
    for iso2 in countries:
        table = SITE_TILE_ASSIGNMENT.read(folders["assignment"], [iso2])  # sorted by (merchant, site_order)
        merchant = table.column("merchant_id").to_numpy()
        site_order = table.column("site_order").to_numpy()
        tile = table.column("tile_id").to_numpy()
        cid = ref.country_id(iso2)
        fields = (
            merchant.astype(np.uint64),
            rng.country_code_int(np.asarray([iso2] * len(tile), dtype="U2")),
            site_order.astype(np.uint64),
        )
        expected = _expected_sites(folders, cid, tile) if mode_of(policy).reads_expected_sites else None
        lon, lat, attempts = place_sites(tile, fields, ref.geometry[cid - 1], grid, key, policy, expected, total_sites)
        for name, values in (
            ("merchant_id", merchant),
            ("country_id", np.full(len(tile), cid, dtype=np.int16)),
            ("site_order", site_order),
            ("tile_id", tile),
            ("lon_deg", lon),
            ("lat_deg", lat),
            ("attempts", attempts),
        ):
            cols[name].append(values)
    return {name: np.concatenate(parts).astype(SITE_JITTER.DTYPES[name]) for name, parts in cols.items()}


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    assignment = ctx.inputs["s5_site_tile_assignment"]
    sizes = SITE_TILE_ASSIGNMENT.row_counts(assignment)
    policy = ctx.policies.s6_jitter.jitter
    country_batches = ctx.execution.country_batches(sizes)
    folders = {
        "assignment": assignment,
        "tile_grid": ctx.inputs["tile_grid"],
        "tile_weights": ctx.inputs["tile_weights"],
    }
    total = int(sum(sizes.values()))
    pieces = [dask.delayed(_batch_task)(folders, b, ctx.grid, ctx.seed, policy, total) for b in country_batches]
    folder = out["s6_site_jitter"]
    store = SITE_JITTER.write(
        folder,
        pieces,
        [sum(sizes[c] for c in b) for b in country_batches],
        {"mode": policy.mode, "order": "legal_country_iso, merchant_id, site_order"},
    )
    _, *attempts = compute([store, *(dask.delayed(_attempts)(piece) for piece in pieces)])
    in_order = [c for batch in country_batches for c in batch]  # the arrays' order, by construction
    SITE_JITTER.write_index(folder, in_order, [sizes[c] for c in in_order])
    n = int(sum(sizes.values()))
    return {
        "sites": n,
        "mean_attempts": round(sum(a[0] for a in attempts) / max(n, 1), 3),
        "max_attempts_used": max((a[1] for a in attempts), default=0),
        "tasks": len(pieces),
    }


def _attempts(piece: dict[str, NDArray[Any]]) -> tuple[int, int]:
    """(sum, max) of the proposal attempts of a batch's sites."""
    a = piece["attempts"]
    return int(a.sum()), int(a.max()) if len(a) else 0
