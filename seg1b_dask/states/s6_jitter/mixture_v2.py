"""S6 ``mixture_v2``: a governed mixture inside each tile (DESIGN §5).

Every site draws, once, a component: the dense **core** around the tile's anchor (the
population-weighted centre of the vendored places in the tile, else the tile centre), a
**secondary** cluster around one of ``secondary_clusters`` keyed points of the tile, or the
sparse **tail** (uniform in the tile within ``tail_max_km`` of the anchor). Core and
secondary spreads are σ = clip(``core_sigma_km_per_sqrt_site`` · √n, ``sigma_min_km``,
``sigma_max_km``) with n the sites in the tile (all merchants): density stays about
constant whatever n, so nearest-neighbour distances do not depend on how busy a tile is.
Proposals outside the tile or the country are redrawn by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import NDArray

from ... import refdata, rng
from ...grid import Grid
from ...policies import S6MixtureV2
from .uniform_v1 import Bounds

KM_PER_DEG = 111.19492664455873  # 6371.0088 km sphere
_COMPONENT = np.uint64(1 << 22)


@cache
def _place_anchors(resolution_arcsec: int) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Every tile holding vendored places (ascending) with the (population + 1)-weighted
    centre of its places: computed once per grid and process."""
    grid = Grid(resolution_arcsec)
    p = refdata.places()
    row, col = grid.cell_of(p.lon, p.lat)
    tiles, inverse = np.unique(row * grid.ncols + col, return_inverse=True)
    weight = p.population + 1.0
    total = np.bincount(inverse, weights=weight)
    return (
        tiles,
        np.bincount(inverse, weights=p.lon * weight) / total,
        np.bincount(inverse, weights=p.lat * weight) / total,
    )


def tile_anchors(tile_id: NDArray[np.int64], grid: Grid) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Population-weighted centre of the places inside each tile, or the tile centre."""
    tiles, lon, lat = _place_anchors(grid.resolution_arcsec)
    pos = np.minimum(np.searchsorted(tiles, tile_id), len(tiles) - 1)
    has = tiles[pos] == tile_id
    west, south, east, north = grid.tile_bounds(tile_id)
    return np.where(has, lon[pos], (west + east) / 2.0), np.where(has, lat[pos], (south + north) / 2.0)


@dataclass(frozen=True)
class Mixture:
    """Per site: its component's centre and spread, and whether it is a tail site."""

    centre_lon: NDArray[np.float64]
    centre_lat: NDArray[np.float64]
    sigma_km: NDArray[np.float64]
    tail: NDArray[np.bool_]
    anchor_lon: NDArray[np.float64]
    anchor_lat: NDArray[np.float64]
    tail_max_km: float


def components(
    tile_id: NDArray[np.int64],
    key_fields: tuple[NDArray[np.uint64], ...],
    grid: Grid,
    key: np.uint64,
    policy: S6MixtureV2,
) -> Mixture:
    _, inverse, load = np.unique(tile_id, return_inverse=True, return_counts=True)
    sigma = np.clip(
        policy.core_sigma_km_per_sqrt_site * np.sqrt(load[inverse]), policy.sigma_min_km, policy.sigma_max_km
    )
    anchor_lon, anchor_lat = tile_anchors(tile_id, grid)
    pick = rng.uniform(key, *key_fields, _COMPONENT)
    core = pick < policy.core_share
    secondary = ~core & (pick < policy.core_share + policy.secondary_share)
    cluster = rng.hash64(key, *key_fields, _COMPONENT + np.uint64(1)) % np.uint64(policy.secondary_clusters)
    west, south, east, north = grid.tile_bounds(tile_id)
    cu = rng.uniform(key, tile_id.astype(np.uint64), cluster, _COMPONENT + np.uint64(2))
    cv = rng.uniform(key, tile_id.astype(np.uint64), cluster, _COMPONENT + np.uint64(3))
    centre_lon = np.where(secondary, west + cu * (east - west), anchor_lon)
    centre_lat = np.where(secondary, south + cv * (north - south), anchor_lat)
    return Mixture(centre_lon, centre_lat, sigma, ~core & ~secondary, anchor_lon, anchor_lat, policy.tail_max_km)


def propose(
    mix: Mixture, sel: NDArray[np.intp], bounds: Bounds, u: NDArray[np.float64], v: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """One proposal for the sites ``sel``: Gaussian (Box–Muller on the keyed u, v) around
    the component centre, or for tail sites uniform in the tile."""
    west, south, east, north = bounds
    radius = mix.sigma_km[sel] * np.sqrt(-2.0 * np.log1p(-u))
    angle = 2.0 * np.pi * v
    lat0 = mix.centre_lat[sel]
    lat = lat0 + radius * np.sin(angle) / KM_PER_DEG
    lon = mix.centre_lon[sel] + radius * np.cos(angle) / (KM_PER_DEG * np.maximum(np.cos(np.radians(lat0)), 1e-6))
    tail = mix.tail[sel]
    lon = np.where(tail, west + u * (east - west), lon)
    lat = np.where(tail, south + v * (north - south), lat)
    return lon, lat


def within_tail(
    mix: Mixture, sel: NDArray[np.intp], lon: NDArray[np.float64], lat: NDArray[np.float64]
) -> NDArray[np.bool_]:
    """Tail sites must stay within ``tail_max_km`` of the anchor (an equirectangular
    distance, exact enough at tile scale)."""
    dx = (lon - mix.anchor_lon[sel]) * np.cos(np.radians(mix.anchor_lat[sel])) * KM_PER_DEG
    dy = (lat - mix.anchor_lat[sel]) * KM_PER_DEG
    return ~mix.tail[sel] | (np.hypot(dx, dy) <= mix.tail_max_km)
