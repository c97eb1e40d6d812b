"""The collapse sentinel (DESIGN §6): are one country's sites squeezed onto a stripe or a corridor?

Collapse is measured against what the country and the site count allow, never in absolute
terms. Counted naively, a country's extent bounds its distinct latitudes (a 2°-tall country
shows at most 2,000 at 3 dp, so every large country looks collapsed at scale), and an
elongated country's own shape is anisotropic (a uniform placement in Chile looks like a
stripe). The reference is the placement the run's own tile weights ask for: as many sites
drawn independently over the country's cells by ``tile_weight`` (its people under
``blend_v2``, its area under the legacy posture), uniform inside a cell. Against it:

- the grid rows (columns) the sites occupy, over the rows the reference occupies in
  expectation: below 15 %, sites sit on a handful of rows (columns) of a country whose
  weights spread over many — the old engine's stripes and bands;
- the relative anisotropy sqrt(λmax/λmin) of C_reference⁻¹ C_sites: above 12, the sites
  form a corridor much narrower, relative to their length, than the weights.

Rows and columns, not finer levels: a town puts many sites inside one cell, which at scale
leaves most of a cell's sub-cell levels empty — clustering, not collapse. A uniform
placement occupies at least the rows the weights' draws do (distinct counts are
Schur-concave, and a more even spread fills more rows), and its covariance differs from the
weights' by a factor of at most 5 along any axis on the vendored countries (5′).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from seg1b_dask.core.grid import Grid
from seg1b_dask.core.metrics import EARTH_RADIUS_KM
from seg1b_dask.io import refdata
from seg1b_dask.io.grids import TILE_GRID

TOP_COUNTRIES = 10
MIN_SITES = 50
MAX_RELATIVE_ANISOTROPY = 12.0
MIN_DISTINCT_SHARE = 0.15
# What ``measure`` returns for a country, with the decimals sentinel.csv prints (0: as is).
FIGURES = {
    "sites": 0,
    "distinct_rows": 0,
    "expected_distinct_rows": 1,
    "distinct_rows_share": 4,
    "distinct_cols": 0,
    "expected_distinct_cols": 1,
    "distinct_cols_share": 4,
    "relative_anisotropy": 3,
    "flagged": 0,
}


def watched(counts: Mapping[str, int]) -> list[str]:
    """The countries the sentinel measures: the ten with the most sites (ties by code) that
    hold at least 50."""
    top = sorted(counts, key=lambda c: (-counts[c], c))[:TOP_COUNTRIES]
    return [c for c in top if counts[c] >= MIN_SITES]


def local_km(
    lon: ArrayLike, lat: ArrayLike, centre_lon: float, centre_lat: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Positions in km east and north of a centre, longitude unwrapped around it."""
    dlon = (np.asarray(lon) - centre_lon + 180.0) % 360.0 - 180.0
    x = np.radians(dlon) * math.cos(math.radians(centre_lat)) * EARTH_RADIUS_KM
    return x, np.radians(np.asarray(lat) - centre_lat) * EARTH_RADIUS_KM


def expected_distinct(p: NDArray[np.float64], n: int) -> float:
    """E[distinct values] of ``n`` independent draws: Σ 1 − (1 − p)ⁿ over the values."""
    p = p[p > 0]
    with np.errstate(divide="ignore"):  # p = 1: log1p(−1) = −inf, one certain value
        return float(-np.expm1(n * np.log1p(-np.minimum(p, 1.0))).sum()) if len(p) else 0.0


@dataclass(frozen=True)
class CountryReference:
    """The placement a country's tile weights ask for: the probability of each of its grid
    rows and columns, and the covariance of positions in its local frame (km east and north
    of its weighted centre, longitude unwrapped around it)."""

    deg: float
    row_p: NDArray[np.float64]
    col_p: NDArray[np.float64]
    centre_lon: float
    centre_lat: float
    covariance: NDArray[np.float64]

    @classmethod
    def from_cells(
        cls, grid: Grid, rows: NDArray[np.int64], cols: NDArray[np.int64], weight: NDArray | None = None
    ) -> CountryReference:
        """The reference of the cells (``rows``, ``cols``) of ``grid`` weighted by ``weight``
        (by default their area: a uniform placement)."""
        if len(rows) == 0:
            raise ValueError("a country with no cell has no reference placement")
        d = grid.deg
        w = grid.row_area_m2()[rows] if weight is None else np.asarray(weight, dtype=np.float64)
        w = w / w.sum()
        row_p = np.bincount(rows, weights=w).astype(np.float64)
        col_p = np.bincount(cols, weights=w).astype(np.float64)
        lon, lat = -180.0 + (cols + 0.5) * d, grid.row_centre_lat(rows)
        lam = np.radians(lon)
        # numpy's own pairwise sums, never a BLAS dot: the same bits on any worker and thread count
        centre_lon = math.degrees(math.atan2(float(np.sum(w * np.sin(lam))), float(np.sum(w * np.cos(lam)))))
        centre_lat = float(np.sum(w * lat))
        x, y = local_km(lon, lat, centre_lon, centre_lat)
        x, y = x - np.sum(w * x), y - np.sum(w * y)
        # Cell centres by weight, plus the spread of a uniform draw inside a cell.
        cell_km = math.radians(d) * EARTH_RADIUS_KM
        xx = float(np.sum(w * x**2)) + (cell_km * math.cos(math.radians(centre_lat))) ** 2 / 12.0
        yy = float(np.sum(w * y**2)) + cell_km**2 / 12.0
        xy = float(np.sum(w * x * y))
        return cls(d, row_p[row_p > 0], col_p[col_p > 0], centre_lon, centre_lat, np.array([[xx, xy], [xy, yy]]))


def grid_reference(tile_grid: Path, tile_weights: Path, grid: Grid, iso2: str) -> CountryReference:
    """The reference of one country from the tile grid and weights S1 and S2 published."""
    tiles, weight = TILE_GRID.country_cells(tile_grid, tile_weights, refdata.countries().country_id(iso2))
    rows, cols = np.divmod(tiles, grid.ncols)
    return CountryReference.from_cells(grid, rows, cols, weight.astype(np.float64))


def covariance(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """The sample covariance of positions, by numpy's pairwise sums (no BLAS: reproducible bits)."""
    n = len(x)
    x, y = x - np.sum(x) / n, y - np.sum(y) / n
    xx, yy, xy = (float(np.sum(a * b)) / max(n - 1, 1) for a, b in ((x, x), (y, y), (x, y)))
    return np.array([[xx, xy], [xy, yy]])


def relative_anisotropy(sites: NDArray[np.float64], reference: NDArray[np.float64]) -> float:
    """sqrt(λmax / λmin) of reference⁻¹ · sites (2 × 2, reference positive definite), in
    closed form: λ are the roots of det(sites − λ reference) = 0."""
    (a, b), (_, c) = sites
    (p, q), (_, r) = reference
    det_r, det_s = p * r - q * q, a * c - b * b
    trace = a * r + c * p - 2.0 * b * q
    root = math.sqrt(max(trace * trace - 4.0 * det_r * det_s, 0.0))
    high, low = (trace + root) / (2.0 * det_r), (trace - root) / (2.0 * det_r)
    return math.sqrt(high / low) if low > 0 else float("inf")


def measure(lon: NDArray[np.float64], lat: NDArray[np.float64], ref: CountryReference) -> dict[str, float]:
    """One country's collapse figures against its reference placement of as many sites:
    distinct grid rows (columns) observed and expected, their ratio (the share), and the
    relative anisotropy sqrt(λmax / λmin) of C_reference⁻¹ C_sites. Flagged when a share is
    below 0.15 or the relative anisotropy above 12."""
    n = len(lat)
    figures: dict[str, float] = {"sites": n}
    rows = np.floor((90.0 - np.asarray(lat)) / ref.deg)
    cols = np.floor((np.asarray(lon) + 180.0) / ref.deg)
    for axis, values, p in (("rows", rows, ref.row_p), ("cols", cols, ref.col_p)):
        observed = len(np.unique(values))
        expected = expected_distinct(p, n)
        figures[f"distinct_{axis}"] = observed
        figures[f"expected_distinct_{axis}"] = expected
        figures[f"distinct_{axis}_share"] = observed / expected
    figures["relative_anisotropy"] = relative_anisotropy(
        covariance(*local_km(lon, lat, ref.centre_lon, ref.centre_lat)), ref.covariance
    )
    figures["flagged"] = bool(
        figures["relative_anisotropy"] > MAX_RELATIVE_ANISOTROPY
        or min(figures["distinct_rows_share"], figures["distinct_cols_share"]) < MIN_DISTINCT_SHARE
    )
    return figures
