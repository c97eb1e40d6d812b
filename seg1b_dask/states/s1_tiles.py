"""S1 tiles: rasterize country polygons onto the global grid.

A cell belongs to a country if its centre is inside the country (even-odd scanline fill
over every ring edge). A country too small to own any centre gets the cells its polygon
touches, so every country owns at least one tile at any resolution. Tasks cover bands of
whole Zarr shards; the grid is never held whole in memory.
"""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pyarrow as pa
import shapely
from numpy.typing import NDArray

from seg1b_dask.core.grid import Grid
from seg1b_dask.engine.context import StateContext
from seg1b_dask.engine.execution import compute
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io import refdata
from seg1b_dask.io.grids import TILE_GRID
from seg1b_dask.io.refdata import EdgeTable


def rasterize_band(edges: EdgeTable, grid: Grid, row0: int, row1: int) -> NDArray[np.int16]:
    """Country id (0 = none) of every cell in rows [row0, row1) by centre-in-polygon."""
    d = grid.deg
    lat_top = 90.0 - row0 * d
    lat_bottom = 90.0 - row1 * d
    ymin = np.minimum(edges.y0, edges.y1)
    ymax = np.maximum(edges.y0, edges.y1)
    sel = (ymax >= lat_bottom) & (ymin <= lat_top)
    x0, y0, x1, y1 = edges.x0[sel], edges.y0[sel], edges.x1[sel], edges.y1[sel]
    cid, ymin, ymax = edges.country_id[sel], ymin[sel], ymax[sel]
    # Rows whose centre line y satisfies ymin <= y < ymax (half-open: vertices count once).
    r_lo = np.maximum(np.floor((90.0 - ymax) / d - 0.5).astype(np.int64) + 1, row0)
    r_hi = np.minimum(np.floor((90.0 - ymin) / d - 0.5).astype(np.int64), row1 - 1)
    span = np.maximum(r_hi - r_lo + 1, 0)
    edge = np.repeat(np.arange(len(span)), span)
    row = np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span) + np.repeat(r_lo, span)
    yc = grid.row_centre_lat(row)
    xc = x0[edge] + (yc - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    country = cid[edge]
    band = np.zeros((row1 - row0, grid.ncols), dtype=np.int16)
    if len(xc) == 0:
        return band
    order = np.lexsort((xc, country, row))
    row, country, xc = row[order], country[order], xc[order]
    group_start = np.r_[True, (row[1:] != row[:-1]) | (country[1:] != country[:-1])]
    start_idx = np.flatnonzero(group_start)
    pos = np.arange(len(row)) - np.repeat(start_idx, np.diff(np.r_[start_idx, len(row)]))
    opening = np.flatnonzero(pos % 2 == 0)
    opening = opening[opening + 1 < len(row)]
    opening = opening[(row[opening + 1] == row[opening]) & (country[opening + 1] == country[opening])]
    r = row[opening] - row0
    c0 = np.clip(np.ceil((xc[opening] + 180.0) / d - 0.5), 0, grid.ncols).astype(np.int64)
    c1 = np.clip(np.ceil((xc[opening + 1] + 180.0) / d - 0.5), 0, grid.ncols).astype(np.int64)
    fill = country[opening].astype(np.int32)
    # Make spans disjoint within a row (first come, in column order) so a difference
    # array fills them exactly.
    order = np.lexsort((c0, r))
    r, c0, c1, fill = r[order], c0[order], c1[order], fill[order]
    stride = np.int64(grid.ncols + 1)
    ends = np.maximum.accumulate(c1 + r * stride)
    prev_end = np.r_[np.int64(-1), ends[:-1]] - r * stride
    c0 = np.maximum(c0, prev_end)
    keep = c1 > c0
    r, c0, c1, fill = r[keep], c0[keep], c1[keep], fill[keep]
    diff = np.zeros((row1 - row0, grid.ncols + 1), dtype=np.int32)
    np.add.at(diff, (r, c0), fill)
    np.add.at(diff, (r, c1), -fill)
    return np.cumsum(diff, axis=1)[:, : grid.ncols].astype(np.int16)


def touched_cells(geom: shapely.Geometry, grid: Grid) -> NDArray[np.int64]:
    """Tile ids of cells whose box intersects ``geom`` (for countries owning no centre)."""
    d = grid.deg
    west, south, east, north = geom.bounds
    c0, c1 = int(np.floor((west + 180.0) / d)), int(np.ceil((east + 180.0) / d))
    r0, r1 = int(np.floor((90.0 - north) / d)), int(np.ceil((90.0 - south) / d))
    row_grid, col_grid = np.meshgrid(
        np.arange(max(r0, 0), min(r1, grid.nrows)), np.arange(max(c0, 0), min(c1, grid.ncols)), indexing="ij"
    )
    rows, cols = row_grid.ravel(), col_grid.ravel()
    boxes = shapely.box(-180.0 + cols * d, 90.0 - (rows + 1) * d, -180.0 + (cols + 1) * d, 90.0 - rows * d)
    hit = shapely.intersects(geom, boxes) & ~shapely.touches(geom, boxes)
    return (rows[hit] * grid.ncols + cols[hit]).astype(np.int64)


def band_stats(band: NDArray[np.int16], row0: int, n_countries: int) -> NDArray[np.int64]:
    """Per country: [cells, row_min, row_max, col_min, col_max] (empty: cells = 0)."""
    stats = np.zeros((n_countries + 1, 5), dtype=np.int64)
    stats[:, 1] = np.iinfo(np.int64).max
    stats[:, 3] = np.iinfo(np.int64).max
    stats[:, 2] = -1
    stats[:, 4] = -1
    rr, cc = np.nonzero(band)
    ids = band[rr, cc].astype(np.int64)
    stats[:, 0] = np.bincount(ids, minlength=n_countries + 1)
    np.minimum.at(stats[:, 1], ids, rr + row0)
    np.maximum.at(stats[:, 2], ids, rr + row0)
    np.minimum.at(stats[:, 3], ids, cc)
    np.maximum.at(stats[:, 4], ids, cc)
    return stats


def band_chunks(band: NDArray[np.int16], row0: int, chunk_rows: int, chunk_cols: int) -> NDArray[np.int64]:
    """(country_id, chunk_row, chunk_col) of every inner chunk of the band holding a country's
    cells (the band covers whole chunk rows), sorted."""
    rows, ncols = band.shape
    n_cc = -(-ncols // chunk_cols)
    chunk = (np.arange(rows)[:, None] // chunk_rows) * n_cc + np.arange(ncols)[None, :] // chunk_cols
    n_chunks = int(chunk.max()) + 1
    present = np.bincount((band.astype(np.int64) * n_chunks + chunk).ravel(), minlength=n_chunks)
    country, local = np.divmod(np.flatnonzero(present), n_chunks)
    keep = country > 0
    local_row, col = np.divmod(local[keep], n_cc)
    return np.column_stack([country[keep], row0 // chunk_rows + local_row, col])


def _merge_stats(parts: list[NDArray[np.int64]]) -> NDArray[np.int64]:
    s = np.stack(parts)
    return np.column_stack(
        [s[:, :, 0].sum(0), s[:, :, 1].min(0), s[:, :, 2].max(0), s[:, :, 3].min(0), s[:, :, 4].max(0)]
    )


def _band_task(folder: Path, grid: Grid, row0: int, row1: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    edges = refdata.country_edges()
    band = rasterize_band(edges, grid, row0, row1)
    TILE_GRID.write_band(folder, row0, band)
    return band_stats(band, row0, len(refdata.countries().iso2)), band_chunks(
        band, row0, *TILE_GRID.chunk_shape(folder)
    )


def _chunk_table(chunks: NDArray[np.int64]) -> pa.Table:
    chunks = np.unique(chunks, axis=0)  # sorted by country, chunk row, chunk col
    return pa.table(
        {
            "country_id": pa.array(chunks[:, 0].astype(np.int16)),
            "chunk_row": pa.array(chunks[:, 1].astype(np.int32)),
            "chunk_col": pa.array(chunks[:, 2].astype(np.int32)),
        }
    )


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    grid, gp = ctx.grid, ctx.policies.grid
    folder = out["tile_grid"]
    shard_rows = min(gp.shard_rows, grid.nrows)
    TILE_GRID.create(
        folder,
        grid,
        shard_rows,
        gp.chunk_cols,
        {
            "title": "seg1b tile grid",
            "resolution_arcsec": grid.resolution_arcsec,
            "tile_id": "row * ncols + col, rows from the north",
            "policy": "grid.yaml",
            "policy_sha256": ctx.policies.digests["grid"],
        },
    )
    arr = TILE_GRID.array(folder, "r+")
    band = shard_rows * ctx.execution.band_shards
    tasks = [dask.delayed(_band_task)(folder, grid, r, min(r + band, grid.nrows)) for r in range(0, grid.nrows, band)]
    results = compute(tasks)
    stats = _merge_stats([r[0] for r in results])
    chunks = [r[1] for r in results]
    chunk_rows, chunk_cols = TILE_GRID.chunk_shape(folder)

    table = refdata.countries()
    n = len(table.iso2)
    touched_only = np.zeros(n + 1, dtype=bool)
    claimed: set[int] = set()
    for cid in np.flatnonzero(stats[1:, 0] == 0) + 1:
        taken = []
        for tile in touched_cells(table.geometry[cid - 1], grid).tolist():
            rr, cc = divmod(tile, grid.ncols)
            owner = int(np.asarray(arr[rr, cc]))
            # Never take another small country's cell, nor any country's last cell.
            if tile in claimed or (owner and stats[owner, 0] <= 1):
                continue
            if owner:
                stats[owner, 0] -= 1
            arr[rr, cc] = cid
            taken.append(tile)
        if not taken:
            continue
        claimed.update(taken)
        rows, cols = np.divmod(np.asarray(taken, dtype=np.int64), grid.ncols)
        chunks.append(np.column_stack([np.full(len(rows), cid), rows // chunk_rows, cols // chunk_cols]))
        touched_only[cid] = True
        stats[cid] = [len(taken), rows.min(), rows.max(), cols.min(), cols.max()]
    eligible = table.eligible(gp.eligibility.min_population) & (stats[1:, 0] > 0)
    if not eligible.any():
        raise Seg1BError(
            Code.E_NO_ELIGIBLE_COUNTRY,
            f"no country has {gp.eligibility.min_population:,} people and a tile: nothing could be placed",
            file="grid.yaml",
            key="eligibility.min_population",
        )
    TILE_GRID.write_countries(
        folder,
        pa.table(
            {
                "country_id": pa.array(np.arange(1, n + 1, dtype=np.int16)),
                "iso2": pa.array(table.iso2.tolist()),
                "region": pa.array(table.region.tolist()),
                "population": pa.array(table.population),
                "eligible": pa.array(eligible),
                "n_tiles": pa.array(stats[1:, 0]),
                "row_min": pa.array(stats[1:, 1]),
                "row_max": pa.array(stats[1:, 2]),
                "col_min": pa.array(stats[1:, 3]),
                "col_max": pa.array(stats[1:, 4]),
                "touched_only": pa.array(touched_only[1:]),
            }
        ),
        _chunk_table(np.concatenate(chunks)),
    )
    return {
        "cells": grid.ncells,
        "land_cells": int(stats[1:, 0].sum()),
        "countries_with_tiles": int((stats[1:, 0] > 0).sum()),
        "eligible_countries": int(eligible.sum()),
        "touched_only": int(touched_only.sum()),
        "tasks": len(tasks),
    }
