"""The collapse sentinel (DESIGN §6): are one country's sites squeezed onto a stripe or a corridor?

Collapse is measured against what the country and the site count allow, never in absolute
terms. Counted naively, a country's extent bounds its distinct latitudes (a 2°-tall country
shows at most 2,000 at 3 dp, so every large country looks collapsed at scale), and an
elongated country's own shape is anisotropic (a uniform placement in Chile looks like a
stripe). The reference is a uniform random placement of the same number of sites over the
country's own grid cells: its expected distinct latitude and longitude levels, and its
covariance of positions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
from numpy.typing import ArrayLike, NDArray

from . import refdata
from .datasets import TILE_GRID
from .grid import Grid
from .metrics import EARTH_RADIUS_KM

TOP_COUNTRIES = 10
MIN_SITES = 50
MAX_RELATIVE_ANISOTROPY = 12.0
MIN_DISTINCT_SHARE = 0.15
# The old engine's thresholds were set on its 30″ grid, counting values at 4 dp: a 30″ cell
# is 0.00833°, so 4 dp cut a cell into 83.3 levels and a one-row stripe shows at most ~85
# distinct latitudes. On a grid of cell size c the sentinel counts levels at c / 83.3 (3 dp
# on 5′), so a level means the same fraction of a cell at any resolution.
LEVELS_PER_CELL = (30.0 / 3600.0) / 1e-4
# What ``measure`` returns for a country, with the decimals sentinel.csv prints (0: as is).
FIGURES = {
    "sites": 0,
    "distinct_lat": 0,
    "expected_distinct_lat": 1,
    "distinct_lat_share": 4,
    "distinct_lon": 0,
    "expected_distinct_lon": 1,
    "distinct_lon_share": 4,
    "relative_anisotropy": 3,
    "flagged": 0,
}


def watched(counts: Mapping[str, int]) -> list[str]:
    """The countries the sentinel measures: the ten with the most sites (ties by code) that
    hold at least 50."""
    top = sorted(counts, key=lambda c: (-counts[c], c))[:TOP_COUNTRIES]
    return [c for c in top if counts[c] >= MIN_SITES]


def _level_probabilities(edge0: float, mass: NDArray[np.float64], width: float, quantum: float) -> NDArray[np.float64]:
    """Probability of every level a draw can fall on, along one axis: cell ``j`` spans
    [edge0 + j·width, edge0 + (j+1)·width) with probability ``mass[j]``, uniform inside it;
    level ``k`` is [(k − ½)·quantum, (k + ½)·quantum), the values that round to k. The
    draw's CDF is piecewise linear between cell edges, so each level's probability is the
    CDF's rise across it."""
    cells = width / quantum  # levels per cell
    u0 = edge0 / quantum
    edges = math.floor(u0 + 0.5) - 0.5 + np.arange(math.ceil(len(mass) * cells) + 2)
    p = np.diff(np.interp(edges, u0 + cells * np.arange(len(mass) + 1), np.r_[0.0, np.cumsum(mass)]))
    return p[p > 0]


def local_km(
    lon: ArrayLike, lat: ArrayLike, centre_lon: float, centre_lat: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Positions in km east and north of a centre, longitude unwrapped around it."""
    dlon = (np.asarray(lon) - centre_lon + 180.0) % 360.0 - 180.0
    x = np.radians(dlon) * math.cos(math.radians(centre_lat)) * EARTH_RADIUS_KM
    return x, np.radians(np.asarray(lat) - centre_lat) * EARTH_RADIUS_KM


def expected_distinct(p: NDArray[np.float64], n: int) -> float:
    """E[distinct levels] of ``n`` independent draws: Σ 1 − (1 − p)ⁿ over the levels."""
    return float(-np.expm1(n * np.log1p(-np.minimum(p, 1.0))).sum())


@dataclass(frozen=True)
class CountryReference:
    """A uniform random placement over one country's cells (by area): the probability of
    each latitude and longitude level, and the covariance of positions in the country's local
    frame (km east and north of its centre, longitude unwrapped around it)."""

    quantum: float
    lat_level_p: NDArray[np.float64]
    lon_level_p: NDArray[np.float64]
    centre_lon: float
    centre_lat: float
    covariance: NDArray[np.float64]

    @classmethod
    def from_cells(cls, grid: Grid, rows: NDArray[np.int64], cols: NDArray[np.int64]) -> CountryReference:
        """The reference of the country owning the cells (``rows``, ``cols``) of ``grid``;
        sums run per row and per column (a cell's area depends on its row only)."""
        if len(rows) == 0:
            raise ValueError("a country with no cell has no reference placement")
        d = grid.deg
        r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        cells = np.bincount(rows, minlength=r1)[r0:]  # per row, from r0
        area = grid.row_area_m2()[r0:r1]
        area = area / (cells @ area)  # probability of one cell of each row
        row_mass = area * cells
        per_cell = np.empty(len(rows))  # one buffer for the per-cell weights
        np.take(np.r_[np.zeros(r0), area], rows, out=per_cell)
        col_mass = np.bincount(cols, weights=per_cell, minlength=c1)[c0:].astype(np.float64)
        quantum = d / LEVELS_PER_CELL
        lat_p = _level_probabilities(90.0 - r1 * d, row_mass[::-1], d, quantum)  # ascending latitude
        lon_p = _level_probabilities(-180.0 + c0 * d, col_mass, d, quantum)
        lon = -180.0 + (np.arange(c0, c1) + 0.5) * d
        lat = grid.row_centre_lat(np.arange(r0, r1))
        lam = np.radians(lon)
        centre_lon = math.degrees(math.atan2(float(col_mass @ np.sin(lam)), float(col_mass @ np.cos(lam))))
        centre_lat = float(row_mass @ lat)
        x, y = local_km(lon, lat, centre_lon, centre_lat)  # per column, per row
        x, y = x - col_mass @ x, y - row_mass @ y
        np.take(np.r_[np.zeros(r0), area * y], rows, out=per_cell)
        xy = float(np.bincount(cols, weights=per_cell, minlength=c1)[c0:] @ x)
        # Cell centres by area, plus the spread of a uniform draw inside a cell.
        cell_km = math.radians(d) * EARTH_RADIUS_KM
        xx = col_mass @ x**2 + (cell_km * math.cos(math.radians(centre_lat))) ** 2 / 12.0
        yy = row_mass @ y**2 + cell_km**2 / 12.0
        return cls(quantum, lat_p, lon_p, centre_lon, centre_lat, np.array([[xx, xy], [xy, yy]]))


def grid_reference(tile_grid: Path, grid: Grid, iso2: str) -> CountryReference:
    """The reference of one country from the tile grid S1 published."""
    rows, cols = np.divmod(TILE_GRID.country_tiles(tile_grid, refdata.countries().country_id(iso2)), grid.ncols)
    return CountryReference.from_cells(grid, rows, cols)


def measure(lon: NDArray[np.float64], lat: NDArray[np.float64], ref: CountryReference) -> dict[str, float]:
    """One country's collapse figures against its reference placement of as many sites:
    distinct latitude (longitude) levels observed and expected, their ratio (the share),
    and the relative anisotropy sqrt(λmax / λmin) of C_country⁻¹ C_sites. Flagged when a
    share is below 0.15 or the relative anisotropy above 12."""
    n = len(lat)
    figures: dict[str, float] = {"sites": n}
    for axis, values, p in (("lat", lat, ref.lat_level_p), ("lon", lon, ref.lon_level_p)):
        observed = len(np.unique(np.round(np.asarray(values) / ref.quantum)))
        expected = expected_distinct(p, n)
        figures[f"distinct_{axis}"] = observed
        figures[f"expected_distinct_{axis}"] = expected
        figures[f"distinct_{axis}_share"] = observed / expected
    sites = np.cov(np.vstack(local_km(lon, lat, ref.centre_lon, ref.centre_lat)))
    low, high = scipy.linalg.eigh(sites, ref.covariance, eigvals_only=True)
    figures["relative_anisotropy"] = float(np.sqrt(high / low)) if low > 0 else float("inf")
    figures["flagged"] = bool(
        figures["relative_anisotropy"] > MAX_RELATIVE_ANISOTROPY
        or min(figures["distinct_lat_share"], figures["distinct_lon_share"]) < MIN_DISTINCT_SHARE
    )
    return figures
