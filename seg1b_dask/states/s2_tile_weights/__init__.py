"""S2 tile weights: per-cell fixed-point integer mass and the country mass vector.

Weights are unsigned integers, so every sum is exact and independent of chunking and task
order; ineligible countries and sea weigh 0. The mode's core lives in its own file
(``legacy.py``, ``blend_v2.py``); the country mass vector S4 allocates to is the tile mass
share under ``legacy`` and the governed vector of ``mass.py`` under ``blend_v2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask
import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from seg1b_dask.core import metrics
from seg1b_dask.core.grid import Grid
from seg1b_dask.engine.context import StateContext
from seg1b_dask.engine.execution import compute
from seg1b_dask.errors import Code, InternalError
from seg1b_dask.io.datasets import COUNTRY_MASS, TILE_GRID, TILE_WEIGHTS
from seg1b_dask.model import mass as country_mass
from seg1b_dask.policies.models import S2BlendV2, S2Legacy
from seg1b_dask.states.s2_tile_weights import blend_v2, legacy

_PART_BITS = 21  # sums of 21-bit parts stay exact in float64 for bands under 2**32 cells


def country_sums(country_id: NDArray[np.int16], weight: NDArray[np.uint64], n_countries: int) -> list[int]:
    """Exact integer mass per country id (index 0 = no country)."""
    ids = country_id.ravel().astype(np.intp)
    w = weight.ravel().astype(np.uint64)
    total = [0] * (n_countries + 1)
    for shift in (0, _PART_BITS, 2 * _PART_BITS):
        part = ((w >> np.uint64(shift)) & np.uint64((1 << _PART_BITS) - 1)).astype(np.float64)
        sums = np.bincount(ids, weights=part, minlength=n_countries + 1)
        total = [t + (int(s) << shift) for t, s in zip(total, sums.tolist(), strict=True)]
    return total


def _urban(
    grid_folder: Path, grid: Grid, policy: S2BlendV2, row0: int, row1: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    radius = policy.population.kernel_radius_cells
    lo, hi = max(row0 - 2 * radius, 0), min(row1 + 2 * radius, grid.nrows)
    window, _ = TILE_GRID.read_band(grid_folder, lo, hi)
    places = blend_v2.places_on_grid(grid.resolution_arcsec, policy.population.min_place_population)
    return blend_v2.urban_band(places, window, lo, row0, row1, radius)


def _totals_task(
    grid_folder: Path, grid: Grid, policy: S2BlendV2, row0: int, row1: int, n: int
) -> tuple[list[int], list[int], list[int], NDArray[np.float64]]:
    """Pass 1 of ``blend_v2``: exact per-country cells, area and placed urban people."""
    cid, area = TILE_GRID.read_band(grid_folder, row0, row1)
    urban, unplaced = _urban(grid_folder, grid, policy, row0, row1)
    cells = country_sums(cid, np.ones(cid.shape, dtype=np.uint64), n)
    area_sum = country_sums(cid, np.broadcast_to(np.rint(area).astype(np.uint64)[:, None], cid.shape), n)
    return cells, area_sum, country_sums(cid, urban.astype(np.uint64), n), unplaced


def _weights_task(
    grid_folder: Path,
    weight_folder: Path,
    grid: Grid,
    eligible: NDArray[np.bool_],
    policy: S2Legacy | S2BlendV2,
    totals: blend_v2.CountryTotals | None,
    row0: int,
    row1: int,
) -> tuple[list[int], list[int]]:
    """Write a band's weights; return its exact per-country mass, all and south of the equator."""
    cid, area = TILE_GRID.read_band(grid_folder, row0, row1)
    if isinstance(policy, S2Legacy):
        weight = legacy.band_weights(cid, area, eligible, policy)
    else:
        if totals is None:
            raise InternalError(Code.E_INTERNAL, "blend_v2 weights need the pass-1 country totals")
        urban, _ = _urban(grid_folder, grid, policy, row0, row1)
        weight = blend_v2.band_weights(cid, area, urban, eligible, totals, policy)
    TILE_WEIGHTS.write_band(weight_folder, row0, weight)
    south = grid.row_centre_lat(np.arange(row0, row1)) < 0
    n = len(eligible) - 1
    return country_sums(cid, weight, n), country_sums(cid[south], weight[south], n)


def _sum_lists(parts: list[list[int]]) -> list[int]:
    return [sum(col) for col in zip(*parts, strict=True)]


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    grid = ctx.grid
    policy = ctx.policies.s2_tile_weights.tile_weights
    grid_folder = ctx.inputs["tile_grid"]
    tiles = TILE_GRID.countries(grid_folder).to_pydict()
    n = len(tiles["iso2"])
    eligible = np.r_[False, np.asarray(tiles["eligible"], dtype=bool)]
    folder = out["tile_weights"]
    shard_rows = TILE_GRID.shard_rows(grid_folder)
    TILE_WEIGHTS.create(
        folder,
        grid,
        shard_rows,
        ctx.policies.grid.chunk_cols,
        {
            "title": "seg1b tile weights",
            "mode": policy.mode,
            "unit": "fixed-point share of the country's mass"
            if policy.mode == "blend_v2"
            else ("area_quantum_m2" if policy.basis == "area_m2" else "cell"),
            "policy": "s2_tile_weights.yaml",
            "policy_sha256": ctx.policies.digests["s2_tile_weights"],
        },
    )
    band = shard_rows * ctx.execution.band_shards
    bands = [(r, min(r + band, grid.nrows)) for r in range(0, grid.nrows, band)]
    totals = None
    stats: dict[str, Any] = {"mode": policy.mode}
    if isinstance(policy, S2BlendV2):
        parts = compute([dask.delayed(_totals_task)(grid_folder, grid, policy, r0, r1, n) for r0, r1 in bands])
        urban = np.asarray(_sum_lists([p[2] for p in parts]), dtype=np.float64)
        population = np.r_[0.0, np.asarray(tiles["population"], dtype=np.float64)]
        totals = blend_v2.CountryTotals(
            np.asarray(_sum_lists([p[0] for p in parts]), dtype=np.int64),
            np.asarray(_sum_lists([p[1] for p in parts]), dtype=np.float64),
            urban,
            population,
        )
        unplaced = np.sum([p[3] for p in parts], axis=0)
        stats["urban_people_placed_share"] = round(float(urban.sum() / max(urban.sum() + unplaced.sum(), 1.0)), 4)
    sums = compute(
        [dask.delayed(_weights_task)(grid_folder, folder, grid, eligible, policy, totals, r0, r1) for r0, r1 in bands]
    )
    mass = np.asarray(_sum_lists([s[0] for s in sums])[1:], dtype=object)
    south_mass = np.asarray(_sum_lists([s[1] for s in sums])[1:], dtype=object)
    total = int(mass.sum())
    tile_share = np.asarray([int(m) / total for m in mass], dtype=np.float64)
    south = np.asarray([int(s) / int(m) if m else 0.0 for s, m in zip(south_mass, mass, strict=True)], dtype=np.float64)
    region = np.asarray(tiles["region"], dtype="U16")
    if isinstance(policy, S2BlendV2):
        vector = country_mass.govern(
            np.asarray(tiles["population"], dtype=np.float64) ** policy.country_mass.population_exponent,
            region,
            south,
            eligible[1:],
            np.asarray(tiles["population"], dtype=np.float64),
            policy.country_mass,
        )
        share, base = vector.share, vector.base_share
        stats["iterations"] = vector.iterations
    else:
        share, base = tile_share, tile_share
    COUNTRY_MASS.write(
        out["country_mass"],
        pa.table(
            {
                "country_id": pa.array(tiles["country_id"], pa.int16()),
                "iso2": pa.array(tiles["iso2"]),
                "region": pa.array(tiles["region"]),
                "eligible": pa.array(tiles["eligible"]),
                "population": pa.array(tiles["population"], pa.int64()),
                "mass": pa.array([int(m) for m in mass], pa.uint64()),
                "south_fraction": pa.array(south),
                "base_share": pa.array(base),
                "mass_share": pa.array(share),
            }
        ),
    )
    stats.update(mass_diagnostics(share, region, south))
    stats["tasks"] = len(bands) * (2 if totals is not None else 1)
    return stats


def mass_diagnostics(
    share: NDArray[np.float64], region: NDArray[np.str_], south: NDArray[np.float64]
) -> dict[str, Any]:
    """Top-k shares, Gini, southern and region shares of a country mass vector."""
    out: dict[str, Any] = {k: round(v, 4) for k, v in metrics.concentration(share[share > 0]).items()}
    out["southern_share"] = round(float((share * south).sum()), 4)
    out["region_share"] = {r: round(float(share[region == r].sum()), 4) for r in sorted(set(region.tolist())) if r}
    return out
