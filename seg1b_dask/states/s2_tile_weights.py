"""S2 tile weights: per-cell fixed-point integer mass and the country mass vector.

Weights are unsigned integers (``area_quantum_m2`` units for the area basis, 1 per cell for
the uniform basis), so every sum is exact and independent of chunking and task order.
Ineligible countries and sea carry weight 0.
"""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pyarrow as pa
import zarr
from numpy.typing import NDArray

from .. import arrays
from ..context import StateContext
from ..execution import compute
from ..policies import S2Legacy
from ..tables import read_table, write_table
from .s1_tiles import AREA_ARRAY, GRID_ARRAY

WEIGHT_ARRAY = "tile_weight"
_PART_BITS = 21  # sums of 21-bit parts stay exact in float64 for bands under 2**32 cells


def band_weights(
    country_id: NDArray[np.int16], row_area_m2: NDArray[np.float64], eligible: NDArray[np.bool_], policy: S2Legacy
) -> NDArray[np.uint64]:
    """Integer mass of each cell of a band (rows x cols) under the legacy basis."""
    if policy.basis == "uniform":
        per_row = np.ones(len(row_area_m2), dtype=np.uint64)
    else:
        per_row = np.maximum(np.rint(row_area_m2 / policy.area_quantum_m2), 1).astype(np.uint64)
    mask = eligible[country_id]
    return np.where(mask, per_row[:, None], np.uint64(0)).astype(np.uint64)


def country_sums(country_id: NDArray[np.int16], weight: NDArray[np.uint64], n_countries: int) -> list[int]:
    """Exact integer mass per country id (index 0 = no country)."""
    ids = country_id.ravel().astype(np.intp)
    w = weight.ravel()
    total = [0] * (n_countries + 1)
    for shift in (0, _PART_BITS, 2 * _PART_BITS):
        part = ((w >> np.uint64(shift)) & np.uint64((1 << _PART_BITS) - 1)).astype(np.float64)
        sums = np.bincount(ids, weights=part, minlength=n_countries + 1)
        total = [t + (int(s) << shift) for t, s in zip(total, sums.tolist(), strict=True)]
    return total


def _band_task(grid_store: str, weight_store: str, eligible: NDArray[np.bool_], policy: S2Legacy, row0: int, row1: int) -> list[int]:
    group = zarr.open_group(grid_store, mode="r")
    cid = arrays.read(arrays.member(group, GRID_ARRAY), slice(row0, row1), slice(None))
    area = arrays.read(arrays.member(group, AREA_ARRAY), slice(row0, row1))
    weight = band_weights(cid, area, eligible, policy)
    arrays.open_array(weight_store, mode="r+")[row0:row1, :] = weight
    return country_sums(cid, weight, len(eligible) - 1)


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    grid = ctx.grid
    policy = ctx.policies.s2_tile_weights.tile_weights
    tiles = read_table(ctx.inputs["tile_grid"] / "country_tiles").to_pydict()
    eligible = np.r_[False, np.asarray(tiles["eligible"], dtype=bool)]
    grid_store = str(ctx.inputs["tile_grid"] / "grid.zarr")
    src = arrays.open_array(grid_store + "/" + GRID_ARRAY)
    assert src.shards is not None
    folder = out["tile_weights"]
    group = zarr.open_group(folder / "weights.zarr", mode="w", zarr_format=3)
    group.attrs.update({"basis": policy.basis, "unit": "area_quantum_m2" if policy.basis == "area_m2" else "cell"})
    group.create_array(
        WEIGHT_ARRAY, shape=src.shape, dtype="uint64", chunks=src.chunks, shards=src.shards, fill_value=0,
        compressors=zarr.codecs.ZstdCodec(level=3),
    )
    band = src.shards[0] * ctx.execution.band_shards
    store = str(folder / "weights.zarr" / WEIGHT_ARRAY)
    tasks = [
        dask.delayed(_band_task)(grid_store, store, eligible, policy, r, min(r + band, grid.nrows))
        for r in range(0, grid.nrows, band)
    ]
    sums = [sum(col) for col in zip(*compute(tasks), strict=True)]
    mass = np.asarray([str(s) for s in sums[1:]])
    total = sum(sums[1:])
    share = np.asarray([s / total for s in sums[1:]], dtype=np.float64)
    write_table(
        pa.table(
            {
                "country_id": pa.array(tiles["country_id"], pa.int16()),
                "iso2": pa.array(tiles["iso2"]),
                "region": pa.array(tiles["region"]),
                "eligible": pa.array(tiles["eligible"]),
                "mass": pa.array([int(m) for m in mass], pa.uint64()),
                "mass_share": pa.array(share),
            }
        ),
        out["country_mass"],
    )
    top = np.sort(share)[::-1]
    return {"basis": policy.basis, "top1_mass_share": round(float(top[0]), 4), "top10_mass_share": round(float(top[:10].sum()), 4), "tasks": len(tasks)}
