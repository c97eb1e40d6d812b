"""S2 tile weights: per-cell fixed-point integer mass and the country mass vector.

Weights are unsigned integers, so every sum is exact and independent of chunking and task
order; ineligible countries and sea weigh 0. Each policy mode lives in its own file behind
``modes.MODES`` (``legacy.py``, ``blend_v2.py``); this module only wires the band tasks.
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
from seg1b_dask.io.datasets import COUNTRY_MASS
from seg1b_dask.io.grids import TILE_GRID, TILE_WEIGHTS
from seg1b_dask.states.s2_tile_weights.contract import Band, Countries, TileWeightMode
from seg1b_dask.states.s2_tile_weights.modes import mode_of
from seg1b_dask.states.s2_tile_weights.sums import country_sums, sum_lists


def _weights_task(
    grid_folder: Path,
    weight_folder: Path,
    grid: Grid,
    eligible: NDArray[np.bool_],
    mode: TileWeightMode,
    totals: Any,
    band: Band,
) -> tuple[list[int], list[int]]:
    """Write a band's weights; return its exact per-country mass, all and south of the equator."""
    cid, area = TILE_GRID.read_band(grid_folder, *band)
    weight = mode.band_weights(grid_folder, grid, band, (cid, area), eligible, totals)
    TILE_WEIGHTS.write_band(weight_folder, band[0], weight)
    south = grid.row_centre_lat(np.arange(*band)) < 0
    n = len(eligible) - 1
    return country_sums(cid, weight, n), country_sums(cid[south], weight[south], n)


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    grid = ctx.grid
    policy = ctx.policies.s2_tile_weights.tile_weights
    mode = mode_of(policy)
    grid_folder = ctx.inputs["tile_grid"]
    tiles = TILE_GRID.countries(grid_folder).to_pydict()
    countries = Countries(
        np.asarray(tiles["population"], dtype=np.float64),
        np.asarray(tiles["region"], dtype="U16"),
        np.asarray(tiles["eligible"], dtype=bool),
    )
    eligible = np.r_[False, countries.eligible]
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
            "unit": mode.unit(),
            "policy": "s2_tile_weights.yaml",
            "policy_sha256": ctx.policies.digests["s2_tile_weights"],
        },
    )
    band = shard_rows * ctx.execution.band_shards
    bands = [(r, min(r + band, grid.nrows)) for r in range(0, grid.nrows, band)]
    totals = mode.country_totals(grid_folder, grid, bands, countries)
    task = dask.delayed(_weights_task)
    sums = compute([task(grid_folder, folder, grid, eligible, mode, totals, b) for b in bands])
    mass = np.asarray(sum_lists([s[0] for s in sums])[1:], dtype=object)
    south_mass = np.asarray(sum_lists([s[1] for s in sums])[1:], dtype=object)
    total = int(mass.sum())
    tile_share = np.asarray([int(m) / total for m in mass], dtype=np.float64)
    south = np.asarray([int(s) / int(m) if m else 0.0 for s, m in zip(south_mass, mass, strict=True)], dtype=np.float64)
    share, base, governed = mode.country_share(tile_share, south, countries)
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
    stats: dict[str, Any] = {"mode": policy.mode, **mode.stats(totals), **governed}
    stats.update(mass_diagnostics(share, countries.region, south))
    stats["tasks"] = len(bands) * mode.passes
    return stats


def mass_diagnostics(
    share: NDArray[np.float64], region: NDArray[np.str_], south: NDArray[np.float64]
) -> dict[str, Any]:
    """Top-k shares, Gini, southern and region shares of a country mass vector."""
    out: dict[str, Any] = {k: round(v, 4) for k, v in metrics.concentration(share[share > 0]).items()}
    out["southern_share"] = round(float((share * south).sum()), 4)
    out["region_share"] = {r: round(float(share[region == r].sum()), 4) for r in sorted(set(region.tolist())) if r}
    return out
