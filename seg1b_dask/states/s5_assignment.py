"""S5 assignment: a keyed permutation of each pair's sites onto its allocated tiles."""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray

from .. import rng
from ..context import StateContext
from ..execution import batches, compute
from ..tables import write_table


def assign_sites(
    merchant_id: NDArray[np.uint64],
    country: NDArray[np.uint64],
    tile_id: NDArray[np.int64],
    n_sites: NDArray[np.int64],
    key: np.uint64,
) -> tuple[NDArray[np.int64], NDArray[np.int32], NDArray[np.int64]]:
    """Plan rows (sorted by pair, tile) -> per site (pair index, site_order, tile_id).

    Site ``k`` of a pair takes the tile at the position of its keyed hash rank, so the
    mapping depends only on (seed, merchant, country, site_order).
    """
    pair_change = np.r_[True, (merchant_id[1:] != merchant_id[:-1]) | (country[1:] != country[:-1])]
    pair_of_row = np.cumsum(pair_change) - 1
    tiles = np.repeat(tile_id, n_sites)
    pair = np.repeat(pair_of_row, n_sites)
    sizes = np.bincount(pair)
    starts = np.cumsum(sizes) - sizes
    site_order = (np.arange(len(pair)) - starts[pair] + 1).astype(np.int32)
    first_row = np.flatnonzero(pair_change)
    h = rng.hash64(key, merchant_id[first_row][pair], country[first_row][pair], site_order)
    by_key = np.lexsort((h, pair))
    assigned = np.empty_like(tiles)
    assigned[by_key] = tiles
    return pair, site_order, assigned


def _batch_task(plan_path: str, countries: list[str], seed: int) -> pa.Table:
    plan = pq.read_table(plan_path, filters=[("legal_country_iso", "in", countries)])
    plan = plan.sort_by([("merchant_id", "ascending"), ("legal_country_iso", "ascending"), ("tile_id", "ascending")])
    iso = np.asarray(plan.column("legal_country_iso").to_pylist(), dtype="U2")
    merchant = plan.column("merchant_id").to_numpy()
    pair, site_order, tile = assign_sites(
        merchant,
        rng.country_code_int(iso),
        plan.column("tile_id").to_numpy(),
        plan.column("n_sites").to_numpy(),
        rng.stream_key(seed, "S5.assign"),
    )
    first = np.flatnonzero(np.r_[True, (merchant[1:] != merchant[:-1]) | (iso[1:] != iso[:-1])])
    return pa.table(
        {
            "merchant_id": pa.array(merchant[first][pair]),
            "legal_country_iso": pa.array(iso[first][pair].tolist(), pa.string()),
            "site_order": pa.array(site_order),
            "tile_id": pa.array(tile),
        }
    )


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    plan_path = str(ctx.inputs["s4_alloc_plan"] / "part-00000.parquet")
    countries = sorted(set(pq.read_table(plan_path, columns=["legal_country_iso"]).column(0).to_pylist()))
    tasks = [dask.delayed(_batch_task)(plan_path, b, ctx.seed) for b in batches(countries, ctx.execution.country_batch)]
    table = pa.concat_tables(compute(tasks)).sort_by(
        [("merchant_id", "ascending"), ("legal_country_iso", "ascending"), ("site_order", "ascending")]
    )
    write_table(table, out["s5_site_tile_assignment"])
    return {"sites": table.num_rows, "distinct_tiles": len(pc.unique(table.column("tile_id"))), "tasks": len(tasks)}
