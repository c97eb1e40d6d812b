"""S5 assignment: a keyed permutation of each pair's sites onto its allocated tiles."""

from __future__ import annotations

from pathlib import Path

import dask
import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from seg1b_dask.core import rng
from seg1b_dask.engine.context import StateContext
from seg1b_dask.engine.execution import compute
from seg1b_dask.io.datasets import ALLOC_PLAN, COUNTRY_PAIRS, SITE_TILE_ASSIGNMENT


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


def _batch_task(plan: Path, out: Path, countries: list[str], seed: int) -> tuple[int, int]:
    """Assign the sites of a batch of countries, country by country; (sites, tiles)."""
    key = rng.stream_key(seed, "S5.assign")
    sites = tiles = 0
    for iso2 in countries:
        rows = ALLOC_PLAN.read(plan, [iso2])  # sorted by (merchant, tile)
        merchant = rows.column("merchant_id").to_numpy()
        code = rng.country_code_int(np.asarray([iso2] * len(merchant), dtype="U2"))
        pair, site_order, tile = assign_sites(
            merchant, code, rows.column("tile_id").to_numpy(), rows.column("n_sites").to_numpy(), key
        )
        first = np.flatnonzero(np.r_[True, merchant[1:] != merchant[:-1]])
        SITE_TILE_ASSIGNMENT.write(
            out,
            iso2,
            pa.table(
                {
                    "merchant_id": merchant[first][pair],
                    "legal_country_iso": pa.array([iso2] * len(pair), pa.string()),
                    "site_order": site_order,
                    "tile_id": tile,
                }
            ),
        )
        sites += len(pair)
        tiles += len(np.unique(tile))
    return sites, tiles


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    plan = ctx.inputs["s4_alloc_plan"]
    pairs = COUNTRY_PAIRS.read(plan, columns=["legal_country_iso", "n_sites"])
    totals = pairs.group_by("legal_country_iso").aggregate([("n_sites", "sum")]).to_pydict()
    sites = dict(zip(totals["legal_country_iso"], totals["n_sites_sum"], strict=True))
    target = out["s5_site_tile_assignment"]
    tasks = [dask.delayed(_batch_task)(plan, target, b, ctx.seed) for b in ctx.execution.country_batches(sites)]
    done = compute(tasks)
    return {"sites": sum(d[0] for d in done), "distinct_tiles": sum(d[1] for d in done), "tasks": len(tasks)}
