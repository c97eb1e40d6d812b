"""S4 allocation plan: (a) sites per (merchant, country), (b) per (merchant, country, tile).

(a) is the policy mode's core (``legacy.py``: 1A's counts; ``remass.py``: the governed
re-mass onto the S2 country mass vector) and runs once per seed on the pair table; (b)
(``tiles.py``) runs as country-batch tasks that read only their own countries' tiles.
Outputs: ``s4_alloc_plan`` (merchant, country, tile, n_sites) and ``site_lineage`` (every
1A stub with its 1B key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from ... import arrays, refdata, rng
from ...context import StateContext
from ...execution import batches, compute
from ...grid import Grid
from ...policies import CountryAllocationRemass, S2BlendV2, TileAllocation
from ...tables import read_table, write_table
from ..s1_tiles import GRID_ARRAY
from ..s2_tile_weights import WEIGHT_ARRAY
from ..s2_tile_weights.country_mass import govern, integer_targets
from . import legacy, remass, tiles
from .remass import Allocation, Pairs


def country_tiles(
    grid: Any, weights: Any, country_id: int, rows: tuple[int, int], cols: tuple[int, int], ncols: int
) -> tuple[NDArray[np.int64], NDArray[np.uint64]]:
    """Tile ids (ascending) and weights of a country's cells with positive weight."""
    window = (slice(rows[0], rows[1] + 1), slice(cols[0], cols[1] + 1))
    cid = arrays.read(grid, *window)
    weight = arrays.read(weights, *window)
    rr, cc = np.nonzero((cid == country_id) & (weight > 0))
    return ((rr + rows[0]) * ncols + cc + cols[0]).astype(np.int64), weight[rr, cc]


def _batch_task(
    paths: dict[str, str], countries: list[dict], policy: TileAllocation, seed: int, grid: Grid
) -> tuple[pa.Table, int]:
    pairs = read_table(
        Path(paths["country_pairs"]), filters=[("legal_country_iso", "in", [c["iso2"] for c in countries])]
    )
    key = rng.stream_key(seed, "S4.tile_tie")
    out_m, out_c, out_t, out_n = [], [], [], []
    iso_col = np.asarray(pairs.column("legal_country_iso").to_pylist(), dtype="U2")
    merchants = pairs.column("merchant_id").to_numpy()
    n_sites = pairs.column("n_sites").to_numpy()
    grid_array = arrays.open_array(paths["grid"])
    weights = arrays.open_array(paths["weights"])
    moved = 0
    for c in countries:
        sel = np.flatnonzero(iso_col == c["iso2"])
        if not len(sel):
            continue
        tile_ids, weight = country_tiles(
            grid_array, weights, c["country_id"], (c["row_min"], c["row_max"]), (c["col_min"], c["col_max"]), grid.ncols
        )
        code = rng.country_code_int(np.asarray([c["iso2"]]))[0]
        rows_m, rows_t, rows_n = [], [], []
        for i in sel:
            m = np.uint64(merchants[i])
            counts = tiles.allocate_pair(policy, int(n_sites[i]), weight, tile_ids, key, m, code)
            hit = np.flatnonzero(counts)
            rows_m.append(np.full(len(hit), m, dtype=np.uint64))
            rows_t.append(tile_ids[hit])
            rows_n.append(counts[hit])
        m_arr, t_arr, n_arr = np.concatenate(rows_m), np.concatenate(rows_t), np.concatenate(rows_n).astype(np.int64)
        if policy.min_sites_per_tile > 1:
            t_arr, k = tiles.no_lone_tiles(t_arr, n_arr, policy.min_sites_per_tile, grid, tile_ids, weight)
            moved += k
        out_m.append(m_arr)
        out_c.append(np.full(len(m_arr), c["iso2"], dtype="U2"))
        out_t.append(t_arr)
        out_n.append(n_arr)
    schema = pa.schema(
        [
            ("merchant_id", pa.uint64()),
            ("legal_country_iso", pa.string()),
            ("tile_id", pa.int64()),
            ("n_sites", pa.int64()),
        ]
    )
    if not out_m:
        return schema.empty_table(), moved
    table = pa.table(
        {
            "merchant_id": np.concatenate(out_m),
            "legal_country_iso": pa.array(np.concatenate(out_c).tolist(), pa.string()),
            "tile_id": np.concatenate(out_t),
            "n_sites": np.concatenate(out_n),
        },
        schema=schema,
    )
    # Lone-tile moves can put one merchant's sites on a tile twice: merge them.
    merged = table.group_by(["merchant_id", "legal_country_iso", "tile_id"]).aggregate([("n_sites", "sum")])
    return merged.rename_columns(["merchant_id", "legal_country_iso", "tile_id", "n_sites"]).select(schema.names).cast(
        schema
    ), moved


def country_batches(tile_grid: Path, wanted: set[str], size: int) -> list[list[dict]]:
    country_rows = read_table(tile_grid / "country_tiles").to_pylist()
    return batches([t for t in country_rows if t["iso2"] in wanted], size)


def _pairs(req: pa.Table) -> Pairs:
    codes = refdata.countries().iso2
    country = np.searchsorted(codes, np.asarray(req.column("legal_country_iso").to_pylist(), dtype="U2")).astype(
        np.int64
    )
    home = np.searchsorted(codes, np.asarray(req.column("home_country_iso").to_pylist(), dtype="U2")).astype(np.int64)
    return Pairs(
        req.column("merchant_id").to_numpy().astype(np.uint64),
        country,
        req.column("n_sites").to_numpy().astype(np.int64),
        home,
    )


def allocate_countries(ctx: StateContext, pairs: Pairs) -> Allocation:
    """S4(a) by mode."""
    mode = ctx.policies.s4_alloc_plan.country_allocation
    if not isinstance(mode, CountryAllocationRemass):
        return legacy.allocate(pairs)
    mass = read_table(ctx.inputs["country_mass"]).to_pydict()
    eligible = np.asarray(mass["eligible"], dtype=bool)
    total = int(pairs.n_sites.sum())
    share = np.asarray(mass["mass_share"], dtype=np.float64)
    if mode.fidelity_weight > 0:
        a_count = np.bincount(pairs.country, weights=pairs.n_sites, minlength=len(eligible))
        share = (1.0 - mode.fidelity_weight) * share + mode.fidelity_weight * a_count / total
        s2 = ctx.policies.s2_tile_weights.tile_weights
        if isinstance(s2, S2BlendV2):  # the mixed vector obeys the same floors and caps
            share = govern(
                share,
                np.asarray(mass["region"], dtype="U16"),
                np.asarray(mass["south_fraction"]),
                eligible,
                np.asarray(mass["population"], dtype=np.float64),
                s2.country_mass,
            ).share
    targets = integer_targets(share, total, mode.min_sites_per_country, eligible)
    lon, lat = refdata.country_centres()
    return remass.remass(pairs, targets, remass.country_distance_km(lon, lat), mode, ctx.seed, refdata.countries().iso2)


def _lineage(pairs: Pairs, allocation: Allocation) -> pa.Table:
    """Every 1A stub with its 1B key: identity for retained stubs, the move otherwise."""
    codes = refdata.countries().iso2
    n = pairs.n_sites
    row = np.repeat(np.arange(len(n)), n)
    order = remass._ranks(n) + 1
    moves = allocation.moves
    stay = order <= allocation.kept[row]
    merchant = np.r_[pairs.merchant[row][stay], moves.merchant].astype(np.uint64)
    src_c = np.r_[pairs.country[row][stay], moves.src_country]
    src_o = np.r_[order[stay], moves.src_site_order]
    dst_c = np.r_[pairs.country[row][stay], moves.dst_country]
    dst_o = np.r_[order[stay], moves.dst_site_order]
    sort = np.lexsort((src_o, src_c, merchant))
    return pa.table(
        {
            "merchant_id": pa.array(merchant[sort]),
            "source_country_iso": pa.array(codes[src_c[sort]].tolist(), pa.string()),
            "source_site_order": pa.array(src_o[sort].astype(np.int32)),
            "legal_country_iso": pa.array(codes[dst_c[sort]].tolist(), pa.string()),
            "site_order": pa.array(dst_o[sort].astype(np.int32)),
        }
    )


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    req = read_table(ctx.inputs["s3_requirements"])
    pairs = _pairs(req)
    allocation = allocate_countries(ctx, pairs)
    codes = refdata.countries().iso2
    country_pairs = pa.table(
        {
            "merchant_id": pa.array(allocation.merchant),
            "legal_country_iso": pa.array(codes[allocation.country].tolist(), pa.string()),
            "n_sites": pa.array(allocation.n_sites),
        }
    )
    write_table(country_pairs, out["s4_alloc_plan"] / "country_pairs")
    write_table(_lineage(pairs, allocation), out["site_lineage"])
    paths = {
        "country_pairs": str(out["s4_alloc_plan"] / "country_pairs"),
        "grid": str(ctx.inputs["tile_grid"] / "grid.zarr" / GRID_ARRAY),
        "weights": str(ctx.inputs["tile_weights"] / "weights.zarr" / WEIGHT_ARRAY),
    }
    policy = ctx.policies.s4_alloc_plan.tile_allocation
    wanted = set(country_pairs.column("legal_country_iso").to_pylist())
    tasks = [
        dask.delayed(_batch_task)(paths, batch, policy, ctx.seed, ctx.grid)
        for batch in country_batches(ctx.inputs["tile_grid"], wanted, ctx.execution.country_batch)
    ]
    results = compute(tasks)
    plan = pa.concat_tables([r[0] for r in results]).sort_by(
        [("merchant_id", "ascending"), ("legal_country_iso", "ascending"), ("tile_id", "ascending")]
    )
    write_table(plan, out["s4_alloc_plan"])
    per_pair = plan.group_by(["merchant_id", "legal_country_iso"]).aggregate([("n_sites", "max"), ("n_sites", "sum")])
    max_share = float(np.max(per_pair.column("n_sites_max").to_numpy() / per_pair.column("n_sites_sum").to_numpy()))
    tile_load = plan.group_by("tile_id").aggregate([("n_sites", "sum")]).column("n_sites_sum")
    stats: dict[str, object] = {
        "plan_rows": plan.num_rows,
        **allocation.stats,
        "max_tile_share_of_pair": round(max_share, 4),
        "lone_sites_moved": int(sum(r[1] for r in results)),
        "tiles_used": len(tile_load),
        "max_sites_per_tile": int(pc.max(tile_load).as_py()),
        "tasks": len(tasks),
    }
    return stats
