"""S2 ``blend_v2``: cell mass from a mix of uniform, area and population.

Each basis sums to 1 within its country, so the mix says how a country's sites spread over
its cells; how much each country gets is the governed country mass vector
(``country_mass.py``). Population per cell = urban mass (vendored places of at least
``min_place_population``, each spread over a Gaussian kernel of its own country's cells
within ``kernel_radius_cells``, capped at ``urban_cap_share`` of the country's table
population) + the rural remainder (table population minus the urban mass) spread by cell
area and weighted by ``rural_weight``.

Two passes over row bands: the first sums, exactly in integers, each country's area and
placed urban mass; the second writes fixed-point weights. A band reads a halo of
``2 * radius`` rows, so every cell sees the same places whatever the band size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import dask
import numpy as np
from numpy.typing import NDArray

from seg1b_dask.core.grid import Grid
from seg1b_dask.engine.execution import compute
from seg1b_dask.io import refdata
from seg1b_dask.io.grids import TILE_GRID
from seg1b_dask.model import mass as country_mass
from seg1b_dask.policies.states import S2BlendV2
from seg1b_dask.states.s2_tile_weights.contract import Band, Cells, Countries
from seg1b_dask.states.s2_tile_weights.sums import country_sums, sum_lists

WEIGHT_SCALE = float(1 << 40)  # a country's weights sum to about this (fixed point)


@dataclass(frozen=True)
class Places:
    """Places of at least the policy's population, with their grid cell."""

    row: NDArray[np.int64]
    col: NDArray[np.int64]
    country_id: NDArray[np.int16]
    population: NDArray[np.float64]


@cache
def places_on_grid(resolution_arcsec: int, min_population: int) -> Places:
    p = refdata.places().at_least(min_population)
    row, col = Grid(resolution_arcsec).cell_of(p.lon, p.lat)
    return Places(row, col, p.country_id, p.population.astype(np.float64))


def urban_band(
    places: Places, window: NDArray[np.int16], window_row0: int, row0: int, row1: int, radius: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Urban people per cell of rows [row0, row1) (rounded to whole people), and per
    country the people of places with no cell of their own country within the kernel
    (counted by the band holding the place's row; they join the rural remainder).

    ``window`` holds the country ids of rows [window_row0, window_row0 + len(window)),
    which must cover [row0 - 2 radius, row1 + 2 radius) within the grid."""
    nrows_win, ncols = window.shape
    near = (places.row >= row0 - radius) & (places.row < row1 + radius)
    row, col, cid, pop = places.row[near], places.col[near], places.country_id[near], places.population[near]
    offset_y, offset_x = np.meshgrid(np.arange(-radius, radius + 1), np.arange(-radius, radius + 1), indexing="ij")
    dy, dx = offset_y.ravel(), offset_x.ravel()
    kernel = np.exp(-(dy**2 + dx**2) / (2.0 * max(radius / 2.0, 0.5) ** 2))
    rr = row[:, None] + dy[None, :]
    cc = (col[:, None] + dx[None, :]) % ncols
    wr = rr - window_row0
    inside = (wr >= 0) & (wr < nrows_win)
    same = np.zeros(rr.shape, dtype=bool)
    same[inside] = window[wr[inside], cc[inside]] == np.broadcast_to(cid[:, None], rr.shape)[inside]
    weight = np.where(same, kernel[None, :], 0.0)
    norm = weight.sum(axis=1)
    placed = norm > 0
    share = np.divide(weight, norm[:, None], out=np.zeros_like(weight), where=placed[:, None])
    mass = share * pop[:, None]
    target = same & (rr >= row0) & (rr < row1)
    flat = (rr[target] - row0) * ncols + cc[target]
    cells = np.bincount(flat, weights=mass[target], minlength=(row1 - row0) * ncols).reshape(row1 - row0, ncols)
    own = ~placed & (row >= row0) & (row < row1)
    unplaced = np.bincount(
        cid[own].astype(np.intp), weights=pop[own], minlength=len(refdata.countries().iso2) + 1
    ).astype(np.float64)
    return np.rint(cells).astype(np.int64), unplaced


@dataclass(frozen=True)
class CountryTotals:
    """Per country id (index 0 = none): cells, area and placed urban people (exact sums),
    table population."""

    cells: NDArray[np.int64]
    area_m2: NDArray[np.float64]
    urban: NDArray[np.float64]
    population: NDArray[np.float64]


def band_weights(
    country_id: NDArray[np.int16],
    row_area_m2: NDArray[np.float64],
    urban: NDArray[np.int64],
    eligible: NDArray[np.bool_],
    totals: CountryTotals,
    policy: S2BlendV2,
) -> NDArray[np.uint64]:
    """Fixed-point weight of every cell of a band: a pure function of the cell and its
    country's totals, so identical whatever the banding."""
    pp = policy.population
    mix = policy.basis_mix
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(totals.urban > 0, np.minimum(1.0, pp.urban_cap_share * totals.population / totals.urban), 0.0)
        rural = np.maximum(totals.population - factor * totals.urban, 0.0) * pp.rural_weight
        pop_total = factor * totals.urban + rural
        cid = country_id.astype(np.intp)
        area = np.rint(row_area_m2)[:, None]
        area_share = area / totals.area_m2[cid]
        pop_cell = factor[cid] * urban + rural[cid] * area_share
        pop_share = np.where(pop_total[cid] > 0, pop_cell / pop_total[cid], area_share)
        blend = mix.uniform / totals.cells[cid] + mix.area_m2 * area_share + mix.population * pop_share
    weight = np.rint(np.nan_to_num(blend) * WEIGHT_SCALE).astype(np.uint64)
    return np.where(eligible[cid], weight, np.uint64(0)).astype(np.uint64)


def _urban(
    grid_folder: Path, grid: Grid, policy: S2BlendV2, row0: int, row1: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    radius = policy.population.kernel_radius_cells
    lo, hi = max(row0 - 2 * radius, 0), min(row1 + 2 * radius, grid.nrows)
    window, _ = TILE_GRID.read_band(grid_folder, lo, hi)
    places = places_on_grid(grid.resolution_arcsec, policy.population.min_place_population)
    return urban_band(places, window, lo, row0, row1, radius)


def _totals_task(
    grid_folder: Path, grid: Grid, policy: S2BlendV2, row0: int, row1: int, n: int
) -> tuple[list[int], list[int], list[int], NDArray[np.float64]]:
    """Pass 1: exact per-country cells, area and placed urban people of a band."""
    cid, area = TILE_GRID.read_band(grid_folder, row0, row1)
    urban, unplaced = _urban(grid_folder, grid, policy, row0, row1)
    cells = country_sums(cid, np.ones(cid.shape, dtype=np.uint64), n)
    area_sum = country_sums(cid, np.broadcast_to(np.rint(area).astype(np.uint64)[:, None], cid.shape), n)
    return cells, area_sum, country_sums(cid, urban.astype(np.uint64), n), unplaced


@dataclass(frozen=True)
class PassOne:
    totals: CountryTotals
    urban_people_placed_share: float


class BlendV2:
    governed: ClassVar[bool] = True
    advice: ClassVar[dict[str, str]] = {
        "urban": "urban share: retune s2_tile_weights population.rural_weight, min_place_population, basis_mix",
    }
    passes: ClassVar[int] = 2

    def __init__(self, policy: S2BlendV2) -> None:
        self.policy = policy

    def unit(self) -> str:
        return "fixed-point share of the country's mass"

    def country_totals(self, grid_folder: Path, grid: Grid, bands: list[Band], countries: Countries) -> PassOne:
        task = dask.delayed(_totals_task)
        n = len(countries.population)
        parts = compute([task(grid_folder, grid, self.policy, r0, r1, n) for r0, r1 in bands])
        urban = np.asarray(sum_lists([p[2] for p in parts]), dtype=np.float64)
        population = np.r_[0.0, countries.population]
        totals = CountryTotals(
            np.asarray(sum_lists([p[0] for p in parts]), dtype=np.int64),
            np.asarray(sum_lists([p[1] for p in parts]), dtype=np.float64),
            urban,
            population,
        )
        unplaced = np.sum([p[3] for p in parts], axis=0)
        return PassOne(totals, round(float(urban.sum() / max(urban.sum() + unplaced.sum(), 1.0)), 4))

    def band_weights(
        self, grid_folder: Path, grid: Grid, band: Band, cells: Cells, eligible: NDArray[np.bool_], totals: Any
    ) -> NDArray[np.uint64]:
        urban, _ = _urban(grid_folder, grid, self.policy, *band)
        return band_weights(*cells, urban, eligible, totals.totals, self.policy)

    def country_share(
        self, tile_share: NDArray[np.float64], south: NDArray[np.float64], countries: Countries
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], dict[str, Any]]:
        """The governed vector of ``mass.py`` over the countries' populations."""
        people = countries.population
        rule = self.policy.country_mass
        vector = country_mass.govern(
            people**rule.population_exponent, countries.region, south, countries.eligible, people, rule
        )
        return vector.share, vector.base_share, {"iterations": vector.iterations}

    def stats(self, totals: Any) -> dict[str, Any]:
        return {"urban_people_placed_share": totals.urban_people_placed_share}
