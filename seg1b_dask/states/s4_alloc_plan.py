"""S4 allocation plan: integer site counts per (merchant, country, tile).

(a) Country allocation — legacy: exactly 1A's per-(merchant, country) counts.
(b) Tile allocation — largest remainder on fixed-point integer weights: each tile within 1
of its quota, counts summing exactly to the pair's count. Ties in the remainder go to the
policy's tie key: ``tile_id`` (legacy; with row-constant weights every merchant then gets
the same run of cells along one raster row — the old stripes) or ``keyed`` (a per-merchant
hash). ``max_tile_share`` caps any tile's share of a pair where the country has room.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dask
import numpy as np
import pyarrow as pa
import zarr
from numpy.typing import NDArray

from .. import arrays, rng
from ..context import StateContext
from ..execution import batches, compute
from ..policies import TileAllocation
from ..tables import read_table, write_table
from .s1_tiles import GRID_ARRAY
from .s2_tile_weights import WEIGHT_ARRAY

TieKey = Callable[[NDArray[np.intp]], NDArray[np.uint64]]


def _best(r: int, remainder: NDArray[np.uint64], tie_key: TieKey) -> NDArray[np.intp]:
    """Indices of the ``r`` best tiles by (remainder desc, tie key asc) in O(N): only tiles
    at the threshold remainder need tie keys."""
    if r <= 0:
        return np.zeros(0, dtype=np.intp)
    kth = np.partition(remainder, len(remainder) - r)[len(remainder) - r]
    above = np.flatnonzero(remainder > kth)
    at = np.flatnonzero(remainder == kth)
    need = r - len(above)
    if need < len(at):
        at = at[np.argpartition(tie_key(at), need - 1)[:need]]
    return np.concatenate([above, at])


def allocate_tiles(n: int, weight: NDArray[np.uint64], tie_key: TieKey, max_tile_share: float) -> NDArray[np.int64]:
    """Largest remainder of ``n`` over integer weights, exact in integer arithmetic."""
    total = np.uint64(int(weight.sum(dtype=np.uint64)))
    product = np.uint64(n) * weight
    counts = (product // total).astype(np.int64)
    remainder = product % total
    counts[_best(n - int(counts.sum()), remainder, tie_key)] += 1
    if max_tile_share < 1.0:
        cap = max(int(np.ceil(max_tile_share * n)), int(np.ceil(n / len(weight))))
        excess = int(np.maximum(counts - cap, 0).sum())
        if excess:
            counts = np.minimum(counts, cap)
            everything = np.arange(len(weight), dtype=np.intp)
            rank = np.lexsort((tie_key(everything), total - remainder))
            while excess:
                room = rank[counts[rank] < cap][:excess]
                counts[room] += 1
                excess -= len(room)
    return counts


def tie_key_for(policy: TileAllocation, key: np.uint64, merchant: np.uint64, tiles: NDArray[np.int64]) -> TieKey:
    """``tile_id`` ties (legacy) or a per-merchant hash of the tile (keyed)."""
    if policy.tie_break == "tile_id":
        return lambda idx: tiles[idx].astype(np.uint64)
    return lambda idx: rng.hash64(key, merchant, tiles[idx])


def country_tiles(grid: zarr.Array, weights: zarr.Array, country_id: int, rows: tuple[int, int], cols: tuple[int, int], ncols: int) -> tuple[NDArray[np.int64], NDArray[np.uint64]]:
    """Tile ids (ascending) and weights of a country's cells with positive weight."""
    window = (slice(rows[0], rows[1] + 1), slice(cols[0], cols[1] + 1))
    cid = arrays.read(grid, *window)
    weight = arrays.read(weights, *window)
    rr, cc = np.nonzero((cid == country_id) & (weight > 0))
    return ((rr + rows[0]) * ncols + cc + cols[0]).astype(np.int64), weight[rr, cc]


def _batch_task(ctx_paths: dict[str, str], countries: list[dict], policy: TileAllocation, seed: int, ncols: int) -> pa.Table:
    pairs = read_table(Path(ctx_paths["s3_requirements"]), columns=["merchant_id", "legal_country_iso", "n_sites"])
    key = rng.stream_key(seed, "S4.tile_tie")
    out_m, out_c, out_t, out_n = [], [], [], []
    iso_col = np.asarray(pairs.column("legal_country_iso").to_pylist(), dtype="U2")
    merchants = pairs.column("merchant_id").to_numpy()
    n_sites = pairs.column("n_sites").to_numpy()
    grid = arrays.open_array(ctx_paths["grid"])
    weights = arrays.open_array(ctx_paths["weights"])
    for c in countries:
        sel = np.flatnonzero(iso_col == c["iso2"])
        if not len(sel):
            continue
        tiles, weight = country_tiles(grid, weights, c["country_id"], (c["row_min"], c["row_max"]), (c["col_min"], c["col_max"]), ncols)
        for i in sel:
            m = np.uint64(merchants[i])
            counts = allocate_tiles(int(n_sites[i]), weight, tie_key_for(policy, key, m, tiles), policy.max_tile_share)
            hit = np.flatnonzero(counts)
            out_m.append(np.full(len(hit), m, dtype=np.uint64))
            out_c.append(np.full(len(hit), c["iso2"], dtype="U2"))
            out_t.append(tiles[hit])
            out_n.append(counts[hit])
    if not out_m:
        return pa.table({"merchant_id": pa.array([], pa.uint64()), "legal_country_iso": pa.array([], pa.string()), "tile_id": pa.array([], pa.int64()), "n_sites": pa.array([], pa.int64())})
    return pa.table(
        {
            "merchant_id": pa.array(np.concatenate(out_m)),
            "legal_country_iso": pa.array(np.concatenate(out_c).tolist(), pa.string()),
            "tile_id": pa.array(np.concatenate(out_t)),
            "n_sites": pa.array(np.concatenate(out_n).astype(np.int64)),
        }
    )


def country_batches(tile_grid: Path, wanted: set[str], size: int) -> list[list[dict]]:
    tiles = read_table(tile_grid / "country_tiles").to_pylist()
    return batches([t for t in tiles if t["iso2"] in wanted], size)


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    req = read_table(ctx.inputs["s3_requirements"])
    wanted = set(req.column("legal_country_iso").to_pylist())
    paths = {
        "s3_requirements": str(ctx.inputs["s3_requirements"]),
        "grid": str(ctx.inputs["tile_grid"] / "grid.zarr" / GRID_ARRAY),
        "weights": str(ctx.inputs["tile_weights"] / "weights.zarr" / WEIGHT_ARRAY),
    }
    policy = ctx.policies.s4_alloc_plan.tile_allocation
    tasks = [
        dask.delayed(_batch_task)(paths, batch, policy, ctx.seed, ctx.grid.ncols)
        for batch in country_batches(ctx.inputs["tile_grid"], wanted, ctx.execution.country_batch)
    ]
    plan = pa.concat_tables(compute(tasks)).sort_by([("merchant_id", "ascending"), ("legal_country_iso", "ascending"), ("tile_id", "ascending")])
    write_table(plan, out["s4_alloc_plan"])
    # Legacy country allocation keeps every site in its 1A country: lineage is the identity.
    n = req.column("n_sites").to_numpy()
    pair = np.repeat(np.arange(len(n)), n)
    site_order = (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n) + 1).astype(np.int32)
    iso = np.asarray(req.column("legal_country_iso").to_pylist(), dtype=object)[pair]
    lineage = pa.table(
        {
            "merchant_id": pa.array(req.column("merchant_id").to_numpy()[pair]),
            "source_country_iso": pa.array(iso.tolist(), pa.string()),
            "source_site_order": pa.array(site_order),
            "legal_country_iso": pa.array(iso.tolist(), pa.string()),
            "site_order": pa.array(site_order),
        }
    )
    write_table(lineage, out["site_lineage"])
    per_pair = plan.group_by(["merchant_id", "legal_country_iso"]).aggregate([("n_sites", "max"), ("n_sites", "sum")])
    max_share = float(np.max(per_pair.column("n_sites_max").to_numpy() / per_pair.column("n_sites_sum").to_numpy()))
    return {"plan_rows": plan.num_rows, "relocated_share": 0.0, "max_tile_share_of_pair": round(max_share, 4), "tasks": len(tasks)}
