"""S7 synthesis: join each site to its coordinates and prove it lies in its tile and in its
country. Fail-closed: a site outside either is a defect, not a warning."""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import zarr
from numpy.typing import NDArray

from .. import arrays, refdata
from ..context import StateContext
from ..errors import E_VALIDATION_FAILED, Seg1BError
from ..execution import compute
from ..grid import Grid
from ..tables import write_table

SITES_PER_TASK = 1 << 18


def inside_tile(
    lon: NDArray[np.float64], lat: NDArray[np.float64], tile_id: NDArray[np.int64], grid: Grid
) -> NDArray[np.bool_]:
    west, south, east, north = grid.tile_bounds(tile_id)
    return (lon >= west) & (lon <= east) & (lat >= south) & (lat <= north)


def inside_country(
    lon: NDArray[np.float64], lat: NDArray[np.float64], country_id: NDArray[np.int16]
) -> NDArray[np.bool_]:
    geoms = refdata.countries().geometry
    ok = np.zeros(len(lon), dtype=bool)
    for cid in np.unique(country_id):
        sel = country_id == cid
        ok[sel] = shapely.contains_xy(geoms[cid - 1], lon[sel], lat[sel])
    return ok


def _batch_task(jitter_store: str, lo: int, hi: int, grid: Grid) -> dict[str, NDArray]:
    group = zarr.open_group(jitter_store, mode="r")
    cols = {
        name: arrays.read(arrays.member(group, name), slice(lo, hi))
        for name in ("merchant_id", "country_id", "site_order", "tile_id", "lon_deg", "lat_deg")
    }
    cols["inside_tile"] = inside_tile(cols["lon_deg"], cols["lat_deg"], cols["tile_id"], grid)
    cols["inside_country"] = inside_country(cols["lon_deg"], cols["lat_deg"], cols["country_id"])
    return cols


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    store = str(ctx.inputs["s6_site_jitter"] / "jitter.zarr")
    n = arrays.member(zarr.open_group(store, mode="r"), "tile_id").shape[0]
    assignment = pq.read_table(ctx.inputs["s5_site_tile_assignment"] / "part-00000.parquet")
    step = SITES_PER_TASK
    parts = compute([dask.delayed(_batch_task)(store, lo, min(lo + step, n), ctx.grid) for lo in range(0, n, step)])
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if not np.array_equal(cols["tile_id"], assignment.column("tile_id").to_numpy()):
        raise Seg1BError(E_VALIDATION_FAILED, "S6 jitter rows do not line up with S5 assignment", file=store)
    iso = refdata.countries().iso2[cols["country_id"] - 1]
    table = pa.table(
        {
            "merchant_id": pa.array(cols["merchant_id"]),
            "legal_country_iso": pa.array(iso.tolist(), pa.string()),
            "site_order": pa.array(cols["site_order"]),
            "tile_id": pa.array(cols["tile_id"]),
            "lon_deg": pa.array(cols["lon_deg"]),
            "lat_deg": pa.array(cols["lat_deg"]),
            "inside_tile": pa.array(cols["inside_tile"]),
            "inside_country": pa.array(cols["inside_country"]),
        }
    )
    bad = np.flatnonzero(~(cols["inside_tile"] & cols["inside_country"]))
    if len(bad):
        i = int(bad[0])
        raise Seg1BError(
            E_VALIDATION_FAILED,
            f"{len(bad)} sites outside their tile or country",
            file=store,
            key=f"merchant_id {cols['merchant_id'][i]}, {iso[i]}, site_order {cols['site_order'][i]}",
        )
    write_table(table, out["s7_site_synthesis"])
    return {"sites": n, "inside_tile": 1.0, "inside_country": 1.0}
