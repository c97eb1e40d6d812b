"""S6 ``mixture_v3``: a governed mixture inside each tile, the same at any number of sites
(DESIGN §5, §6 "scale invariance").

Every site draws, once, a component: the dense **core**, a Gaussian around the tile's
anchor (the population-weighted centre of the vendored places in the tile, else the tile
centre); a **secondary** cluster, the same Gaussian around one of ``secondary_clusters``
keyed points within ``secondary_reach`` σ of the anchor; or the bounded sparse **tail**,
uniform within ``tail_reach`` σ of the anchor (east–west and north–south).

σ is the tile's footprint: its effective area 2πσ² holds the outlets the tile is expected to
carry — its share of its country's people-driven tile weight times the country's outlets —
at ``core_density_per_km2_per_million`` outlets per km² per million outlets in all. So σ
follows people (via the weights), not how many sites a tile happened to draw; every
component is a fixed shape scaled by σ, and every density grows in proportion to the number
of sites: nearest-neighbour distances shrink as 1/√N while their ratios, the near-city share
and the collapse sentinel mean the same at 10³ and 10⁸.

Draws are truncated to the tile by construction (inverse CDF of a normal truncated to the
tile's latitude and longitude bounds): a proposal is redrawn only when the country's border
clips the tile or two sites meet.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cache
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr, ndtri

from seg1b_dask.core import rng
from seg1b_dask.core.grid import Grid
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io import refdata
from seg1b_dask.policies.states import S6MixtureV3
from seg1b_dask.states.s6_jitter.contract import Bounds, Proposer

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
    """Per site: its component's centre and spread, and the tail's box around the anchor."""

    centre_lon: NDArray[np.float64]
    centre_lat: NDArray[np.float64]
    sigma_km: NDArray[np.float64]
    tail: NDArray[np.bool_]
    anchor_lon: NDArray[np.float64]
    anchor_lat: NDArray[np.float64]
    tail_reach: float


def footprint_sigma_km(expected_sites: NDArray[np.float64], total_sites: int, policy: S6MixtureV3) -> NDArray:
    """σ of a tile's footprint: 2πσ² = expected sites / density, density ∝ all sites."""
    density = policy.core_density_per_km2_per_million * total_sites / 1e6
    return np.sqrt(expected_sites / (2.0 * np.pi * density))


def components(
    tile_id: NDArray[np.int64],
    expected_sites: NDArray[np.float64],
    total_sites: int,
    key_fields: tuple[NDArray[np.uint64], ...],
    grid: Grid,
    key: np.uint64,
    policy: S6MixtureV3,
) -> Mixture:
    """Each site's component; ``expected_sites`` is its tile's expected outlets."""
    sigma = footprint_sigma_km(expected_sites, total_sites, policy)
    anchor_lon, anchor_lat = tile_anchors(tile_id, grid)
    pick = rng.uniform(key, *key_fields, _COMPONENT)
    core = pick < policy.core_share
    secondary = ~core & (pick < policy.core_share + policy.secondary_share)
    cluster = rng.hash64(key, *key_fields, _COMPONENT + np.uint64(1)) % np.uint64(policy.secondary_clusters)
    cu = rng.uniform(key, tile_id.astype(np.uint64), cluster, _COMPONENT + np.uint64(2)) * 2.0 - 1.0
    cv = rng.uniform(key, tile_id.astype(np.uint64), cluster, _COMPONENT + np.uint64(3)) * 2.0 - 1.0
    reach_lat = policy.secondary_reach * sigma / KM_PER_DEG
    reach_lon = reach_lat / np.maximum(np.cos(np.radians(anchor_lat)), 1e-6)
    west, south, east, north = grid.tile_bounds(tile_id)
    centre_lon = np.where(secondary, np.clip(anchor_lon + cu * reach_lon, west, east), anchor_lon)
    centre_lat = np.where(secondary, np.clip(anchor_lat + cv * reach_lat, south, north), anchor_lat)
    return Mixture(centre_lon, centre_lat, sigma, ~core & ~secondary, anchor_lon, anchor_lat, policy.tail_reach)


def _truncated(centre: NDArray, sigma: NDArray, low: NDArray, high: NDArray, u: NDArray) -> NDArray[np.float64]:
    """Normal(centre, sigma) truncated to [low, high] at quantile ``u`` (inverse CDF)."""
    safe = np.maximum(sigma, 1e-12)
    a, b = ndtr((low - centre) / safe), ndtr((high - centre) / safe)
    return np.clip(centre + safe * ndtri(a + u * (b - a)), low, high)


def propose(
    mix: Mixture, sel: NDArray[np.intp], bounds: Bounds, u: NDArray[np.float64], v: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """One proposal for the sites ``sel``, always inside their tile: a normal truncated to the
    tile around the component centre, or for tail sites uniform over the tile's part within
    ``tail_reach`` σ of the anchor."""
    west, south, east, north = bounds
    lat0 = mix.centre_lat[sel]
    sigma_lat = mix.sigma_km[sel] / KM_PER_DEG
    sigma_lon = sigma_lat / np.maximum(np.cos(np.radians(lat0)), 1e-6)
    lon = _truncated(mix.centre_lon[sel], sigma_lon, west, east, u)
    lat = _truncated(lat0, sigma_lat, south, north, v)
    reach_lat = mix.tail_reach * mix.sigma_km[sel] / KM_PER_DEG
    reach_lon = reach_lat / np.maximum(np.cos(np.radians(mix.anchor_lat[sel])), 1e-6)
    t_west = np.maximum(west, mix.anchor_lon[sel] - reach_lon)
    t_east = np.minimum(east, mix.anchor_lon[sel] + reach_lon)
    t_south = np.maximum(south, mix.anchor_lat[sel] - reach_lat)
    t_north = np.minimum(north, mix.anchor_lat[sel] + reach_lat)
    tail = mix.tail[sel]
    lon = np.where(tail, t_west + u * (t_east - t_west), lon)
    lat = np.where(tail, t_south + v * (t_north - t_south), lat)
    return lon, lat


class MixtureV3:
    governed: ClassVar[bool] = True
    advice: ClassVar[dict[str, str]] = {
        "nn": "NN tail: retune s6_jitter core_density_per_km2_per_million, secondary_reach, tail_reach "
        "and s4_alloc_plan min_sites_per_tile",
    }
    reads_expected_sites: ClassVar[bool] = True

    def __init__(self, policy: S6MixtureV3) -> None:
        self.policy = policy
        self.max_attempts = policy.max_attempts

    def proposer(
        self,
        tile_id: NDArray[np.int64],
        expected_sites: NDArray[np.float64] | None,
        total_sites: int,
        key_fields: tuple[NDArray[np.uint64], ...],
        grid: Grid,
        key: np.uint64,
    ) -> Proposer:
        """Each site's component, fixed once; every attempt then draws from it."""
        if expected_sites is None:
            raise Seg1BError(Code.E_INTERNAL, "mixture_v3 needs each tile's expected outlets")
        mix = components(tile_id, expected_sites, total_sites, key_fields, grid, key, self.policy)
        return functools.partial(propose, mix)
