"""S6 jitter: place each site inside its tile and inside its country polygon.

``uniform_v1`` (legacy): uniform in the cell, redrawn with the next keyed counter until the
point is inside the country and distinct from every other site. Sites still outside after
``max_attempts`` draw in the bounding box of (cell ∩ country), then fall back to a point on
that intersection's surface: always inside, always deterministic.
"""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pyarrow.parquet as pq
import shapely
import zarr
from numpy.typing import NDArray

from .. import refdata, rng
from ..context import StateContext
from ..execution import batches, compute
from ..grid import Grid

ARRAYS = ("merchant_id", "country_id", "site_order", "tile_id", "lon_deg", "lat_deg", "attempts")
SITE_CHUNK = 1 << 20


def _distinct(lon: NDArray[np.float64], lat: NDArray[np.float64]) -> NDArray[np.bool_]:
    """False for every site whose exact coordinates repeat an earlier site's."""
    if len(lon) < 2:
        return np.ones(len(lon), dtype=bool)
    order = np.lexsort((np.arange(len(lon)), lat, lon))
    repeat = np.r_[False, (lon[order][1:] == lon[order][:-1]) & (lat[order][1:] == lat[order][:-1])]
    ok = np.ones(len(lon), dtype=bool)
    ok[order[repeat]] = False
    return ok


def jitter_uniform(
    tile_id: NDArray[np.int64], key_fields: tuple[NDArray[np.uint64], ...], geom: shapely.Geometry, grid: Grid,
    key: np.uint64, max_attempts: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int16]]:
    west, south, east, north = grid.tile_bounds(tile_id)
    lon = np.full(len(tile_id), np.nan)
    lat = np.full(len(tile_id), np.nan)
    attempts = np.zeros(len(tile_id), dtype=np.int16)
    pending = np.arange(len(tile_id))
    lo_x, lo_y, span_x, span_y = west.copy(), south.copy(), east - west, north - south
    for attempt in range(2 * max_attempts):
        if attempt == max_attempts and len(pending):
            # Second phase: draw in the bounding box of (cell ∩ country).
            cells = shapely.box(west[pending], south[pending], east[pending], north[pending])
            bx = shapely.bounds(shapely.intersection(geom, cells))
            lo_x[pending], lo_y[pending] = bx[:, 0], bx[:, 1]
            span_x[pending], span_y[pending] = bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]
        if not len(pending):
            break
        fields = tuple(f[pending] for f in key_fields)
        u = rng.uniform(key, *fields, np.uint64(2 * attempt))
        v = rng.uniform(key, *fields, np.uint64(2 * attempt + 1))
        lon[pending] = lo_x[pending] + u * span_x[pending]
        lat[pending] = lo_y[pending] + v * span_y[pending]
        attempts[pending] = attempt + 1
        ok = shapely.contains_xy(geom, lon[pending], lat[pending])
        lon[pending[~ok]] = np.nan
        ok_all = ~np.isnan(lon)
        distinct = np.ones(len(lon), dtype=bool)
        distinct[ok_all] = _distinct(lon[ok_all], lat[ok_all])
        redo = ~ok_all | ~distinct
        lon[redo] = np.nan
        pending = np.flatnonzero(redo)
    for i in pending:  # deterministic last resort, still inside the country
        point = shapely.point_on_surface(shapely.intersection(geom, shapely.box(west[i], south[i], east[i], north[i])))
        lon[i], lat[i] = point.x, point.y
    return lon, lat, attempts


def _batch_task(assign_path: str, countries: list[str], grid: Grid, seed: int, max_attempts: int) -> dict[str, NDArray]:
    table = pq.read_table(assign_path, filters=[("legal_country_iso", "in", countries)])
    table = table.sort_by([("merchant_id", "ascending"), ("legal_country_iso", "ascending"), ("site_order", "ascending")])
    iso = np.asarray(table.column("legal_country_iso").to_pylist(), dtype="U2")
    merchant = table.column("merchant_id").to_numpy()
    site_order = table.column("site_order").to_numpy()
    tile = table.column("tile_id").to_numpy()
    ref = refdata.countries()
    key = rng.stream_key(seed, "S6.jitter")
    lon = np.empty(len(tile))
    lat = np.empty(len(tile))
    attempts = np.empty(len(tile), dtype=np.int16)
    cids = np.empty(len(tile), dtype=np.int16)
    for code in countries:
        sel = np.flatnonzero(iso == code)
        cid = ref.country_id(code)
        cids[sel] = cid
        fields = (merchant[sel].astype(np.uint64), rng.country_code_int(iso[sel]), site_order[sel].astype(np.uint64))
        lon[sel], lat[sel], attempts[sel] = jitter_uniform(tile[sel], fields, ref.geometry[cid - 1], grid, key, max_attempts)
    return {"merchant_id": merchant, "country_id": cids, "site_order": site_order, "tile_id": tile, "lon_deg": lon, "lat_deg": lat, "attempts": attempts}


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    assign_path = str(ctx.inputs["s5_site_tile_assignment"] / "part-00000.parquet")
    countries = sorted(set(pq.read_table(assign_path, columns=["legal_country_iso"]).column(0).to_pylist()))
    policy = ctx.policies.s6_jitter
    tasks = [dask.delayed(_batch_task)(assign_path, b, ctx.grid, ctx.seed, policy.max_attempts) for b in batches(countries, ctx.execution.country_batch)]
    parts = compute(tasks)
    cols = {name: np.concatenate([p[name] for p in parts]) for name in ARRAYS}
    # Canonical order: merchant, country code, site_order (country ids ascend with ISO code).
    order = np.lexsort((cols["site_order"], cols["country_id"], cols["merchant_id"]))
    group = zarr.open_group(out["s6_site_jitter"] / "jitter.zarr", mode="w", zarr_format=3)
    group.attrs.update({"mode": policy.mode, "order": "merchant_id, legal_country_iso, site_order"})
    for name in ARRAYS:
        data = cols[name][order]
        group.create_array(name, data=data, chunks=(min(SITE_CHUNK, max(len(data), 1)),), compressors=zarr.codecs.ZstdCodec(level=3))
    return {"sites": len(order), "mean_attempts": round(float(cols["attempts"].mean()), 3), "max_attempts_used": int(cols["attempts"].max()), "tasks": len(tasks)}
