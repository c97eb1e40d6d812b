"""S2 tile weights: per-cell fixed-point integer mass and the country mass vector.

Weights are unsigned integers, so every sum is exact and independent of chunking and task
order; ineligible countries and sea weigh 0. The mode's core lives in its own file
(``legacy.py``, ``blend_v2.py``); the country mass vector S4 allocates to is the tile mass
share under ``legacy`` and the governed vector of ``country_mass.py`` under ``blend_v2``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask
import numpy as np
import pyarrow as pa
import zarr
from numpy.typing import NDArray

from ... import arrays, metrics
from ...context import StateContext
from ...execution import compute
from ...grid import Grid
from ...policies import S2BlendV2, S2Legacy
from ...tables import read_table, write_table
from ..s1_tiles import AREA_ARRAY, GRID_ARRAY
from . import blend_v2, country_mass, legacy

WEIGHT_ARRAY = "tile_weight"
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


def _read_band(grid_store: str, row0: int, row1: int) -> tuple[NDArray[np.int16], NDArray[np.float64]]:
    group = zarr.open_group(grid_store, mode="r")
    return arrays.read(arrays.member(group, GRID_ARRAY), slice(row0, row1), slice(None)), arrays.read(
        arrays.member(group, AREA_ARRAY), slice(row0, row1)
    )


def _urban(
    grid_store: str, grid: Grid, policy: S2BlendV2, row0: int, row1: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    radius = policy.population.kernel_radius_cells
    lo, hi = max(row0 - 2 * radius, 0), min(row1 + 2 * radius, grid.nrows)
    window, _ = _read_band(grid_store, lo, hi)
    places = blend_v2.places_on_grid(grid.resolution_arcsec, policy.population.min_place_population)
    return blend_v2.urban_band(places, window, lo, row0, row1, radius)


def _totals_task(
    grid_store: str, grid: Grid, policy: S2BlendV2, row0: int, row1: int, n: int
) -> tuple[list[int], list[int], list[int], NDArray[np.float64]]:
    """Pass 1 of ``blend_v2``: exact per-country cells, area and placed urban people."""
    cid, area = _read_band(grid_store, row0, row1)
    urban, unplaced = _urban(grid_store, grid, policy, row0, row1)
    cells = country_sums(cid, np.ones(cid.shape, dtype=np.uint64), n)
    area_sum = country_sums(cid, np.broadcast_to(np.rint(area).astype(np.uint64)[:, None], cid.shape), n)
    return cells, area_sum, country_sums(cid, urban.astype(np.uint64), n), unplaced


def _weights_task(
    grid_store: str,
    weight_store: str,
    grid: Grid,
    eligible: NDArray[np.bool_],
    policy: S2Legacy | S2BlendV2,
    totals: blend_v2.CountryTotals | None,
    row0: int,
    row1: int,
) -> tuple[list[int], list[int]]:
    """Write a band's weights; return its exact per-country mass, all and south of the equator."""
    cid, area = _read_band(grid_store, row0, row1)
    if isinstance(policy, S2Legacy):
        weight = legacy.band_weights(cid, area, eligible, policy)
    else:
        assert totals is not None
        urban, _ = _urban(grid_store, grid, policy, row0, row1)
        weight = blend_v2.band_weights(cid, area, urban, eligible, totals, policy)
    arrays.open_array(weight_store, mode="r+")[row0:row1, :] = weight
    south = grid.row_centre_lat(np.arange(row0, row1)) < 0
    n = len(eligible) - 1
    return country_sums(cid, weight, n), country_sums(cid[south], weight[south], n)


def _sum_lists(parts: list[list[int]]) -> list[int]:
    return [sum(col) for col in zip(*parts, strict=True)]


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    grid = ctx.grid
    policy = ctx.policies.s2_tile_weights.tile_weights
    tiles = read_table(ctx.inputs["tile_grid"] / "country_tiles").to_pydict()
    n = len(tiles["iso2"])
    eligible = np.r_[False, np.asarray(tiles["eligible"], dtype=bool)]
    grid_store = str(ctx.inputs["tile_grid"] / "grid.zarr")
    src = arrays.open_array(grid_store + "/" + GRID_ARRAY)
    folder = out["tile_weights"]
    group = zarr.open_group(folder / "weights.zarr", mode="w", zarr_format=3)
    group.attrs.update(
        {
            "mode": policy.mode,
            "unit": "fixed-point share of the country's mass"
            if policy.mode == "blend_v2"
            else ("area_quantum_m2" if policy.basis == "area_m2" else "cell"),
        }
    )
    group.create_array(
        WEIGHT_ARRAY,
        shape=src.shape,
        dtype="uint64",
        chunks=src.chunks,
        shards=src.shards,
        fill_value=0,
        compressors=zarr.codecs.ZstdCodec(level=3),
    )
    band = (src.shards or src.chunks)[0] * ctx.execution.band_shards
    bands = [(r, min(r + band, grid.nrows)) for r in range(0, grid.nrows, band)]
    store = str(folder / "weights.zarr" / WEIGHT_ARRAY)
    totals = None
    stats: dict[str, Any] = {"mode": policy.mode}
    if isinstance(policy, S2BlendV2):
        parts = compute([dask.delayed(_totals_task)(grid_store, grid, policy, r0, r1, n) for r0, r1 in bands])
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
        [dask.delayed(_weights_task)(grid_store, store, grid, eligible, policy, totals, r0, r1) for r0, r1 in bands]
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
    write_table(
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
        out["country_mass"],
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
