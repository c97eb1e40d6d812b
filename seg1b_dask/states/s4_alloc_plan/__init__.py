"""S4 allocation plan: (a) sites per (merchant, country), (b) per (merchant, country, tile).

(a) is the policy mode's core, one file per mode behind ``modes.MODES`` (``legacy.py``:
1A's counts; ``remass.py``: the governed re-mass onto the S2 country mass vector), and runs
once per seed on the pair table; (b)
(``tiles.py``) runs as country-batch tasks that read only their own countries' pairs and
tiles and write only their own countries' parts of ``s4_alloc_plan`` (pairs and tiles) and
``site_lineage`` (every 1A stub with its 1B key).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from seg1b_dask.core import rng
from seg1b_dask.core.grid import Grid
from seg1b_dask.engine.context import StateContext
from seg1b_dask.engine.execution import compute
from seg1b_dask.io import refdata
from seg1b_dask.io.datasets import ALLOC_PLAN, COUNTRY_MASS, COUNTRY_PAIRS, S3_REQUIREMENTS, SITE_LINEAGE
from seg1b_dask.io.grids import TILE_GRID
from seg1b_dask.model import mass
from seg1b_dask.policies.states import TileAllocation
from seg1b_dask.states.s4_alloc_plan import tiles
from seg1b_dask.states.s4_alloc_plan.contract import Allocation, Pairs
from seg1b_dask.states.s4_alloc_plan.modes import mode_of
from seg1b_dask.states.s4_alloc_plan.moves import Moves, ranks


def allocate_country_tiles(
    pairs: pa.Table,
    tile_ids: NDArray[np.int64],
    weight: NDArray[np.uint64],
    iso2: str,
    policy: TileAllocation,
    seed: int,
    grid: Grid,
) -> tuple[pa.Table, int]:
    """Plan rows of one country, sorted by (merchant, tile), and the lone sites moved
    (``seg1b feasibility`` calls it too, for allocations that do not follow the weights)."""
    key = rng.stream_key(seed, "S4.tile_tie")
    code = rng.country_code_int(np.asarray([iso2]))[0]
    merchants = pairs.column("merchant_id").to_numpy()
    n_sites = pairs.column("n_sites").to_numpy().astype(np.int64)
    pair, tile, count = tiles.allocate_country(policy, n_sites, merchants, weight, tile_ids, key, code)
    m_arr, t_arr, n_arr = merchants[pair], tile_ids[tile], count
    moved = 0
    if policy.min_sites_per_tile > 1:
        t_arr, moved = tiles.no_lone_tiles(t_arr, n_arr, policy.min_sites_per_tile, grid, tile_ids, weight)
    # Lone-tile moves can put one merchant's sites on a tile twice: merge them.
    order = np.lexsort((t_arr, m_arr))
    m_arr, t_arr, n_arr = m_arr[order], t_arr[order], n_arr[order]
    first = np.flatnonzero(np.r_[True, (m_arr[1:] != m_arr[:-1]) | (t_arr[1:] != t_arr[:-1])])
    plan = pa.table(
        {
            "merchant_id": m_arr[first],
            "legal_country_iso": pa.array([iso2] * len(first), pa.string()),
            "tile_id": t_arr[first],
            "n_sites": np.add.reduceat(n_arr, first) if len(first) else n_arr[:0],
        }
    )
    return plan, moved


def _lineage(iso2: str, retained: tuple[NDArray[np.uint64], NDArray[np.int64]], arrivals: Moves) -> pa.Table:
    """Lineage rows of the sites in one country: its retained 1A stubs (site_order kept)
    and the stubs that arrive from elsewhere, sorted by (merchant, site_order)."""
    codes = refdata.countries().iso2
    merchant, kept = retained
    stay_m = np.repeat(merchant, kept)
    stay_o = ranks(kept) + 1
    in_m, in_src_c, in_src_o, _, in_o = arrivals.expand()
    m = np.r_[stay_m, in_m].astype(np.uint64)
    order = np.r_[stay_o, in_o]
    src = np.r_[np.full(len(stay_m), np.searchsorted(codes, iso2)), in_src_c].astype(np.int64)
    sort = np.lexsort((order, m))
    names = pa.array(codes.tolist(), pa.string())
    return pa.table(
        {
            "merchant_id": m[sort],
            "source_country_iso": names.take(src[sort]),
            "source_site_order": np.r_[stay_o, in_src_o][sort].astype(np.int32),
            "legal_country_iso": pa.array([iso2], pa.string()).take(np.zeros(len(m), dtype=np.int64)),
            "site_order": order[sort].astype(np.int32),
        }
    )


def _save_batch(path: Path, countries: list[str], retained: dict[str, Any], arrivals: dict[str, Moves]) -> None:
    """A batch's pair-level inputs in one scratch file, which its task loads: the graph
    carries paths, never the data."""
    arrays: dict[str, Any] = {}
    for iso2 in countries:
        arrays[f"{iso2}.merchant"], arrays[f"{iso2}.kept"] = retained[iso2]
        for name in Moves.__dataclass_fields__:
            arrays[f"{iso2}.moves.{name}"] = getattr(arrivals[iso2], name)
    np.savez(path, **arrays)


def _load_batch(path: Path) -> dict[str, tuple[tuple[NDArray[np.uint64], NDArray[np.int64]], Moves]]:
    """Per country of the batch: its retained stubs and its arriving moves."""
    with np.load(path) as npz:
        data = dict(npz)
    countries = sorted({name.split(".", 1)[0] for name in data})
    return {
        iso2: (
            (data[f"{iso2}.merchant"], data[f"{iso2}.kept"]),
            Moves(*(data[f"{iso2}.moves.{name}"] for name in Moves.__dataclass_fields__)),
        )
        for iso2 in countries
    }


def _batch_task(
    folders: dict[str, Path],
    countries: list[dict[str, Any]],
    inputs: Path,
    policy: TileAllocation,
    seed: int,
    grid: Grid,
) -> dict[str, Any]:
    """Allocate a batch of countries over their own tiles; write their plan and lineage parts
    (the driver wrote their pairs; ``inputs`` holds their retained stubs and arriving moves)."""
    batch_inputs = _load_batch(inputs)
    stats = {"plan_rows": 0, "lone_sites_moved": 0, "tiles_used": 0, "max_sites_per_tile": 0, "max_share": 0.0}
    stats["south_sites"] = 0  # tiles never straddle the equator: the checkpoint's southern share
    for c in countries:
        iso2 = c["iso2"]
        pairs = COUNTRY_PAIRS.read(folders["plan"], [iso2])
        retained, arrivals = batch_inputs[iso2]
        tile_ids, weight = TILE_GRID.country_cells(folders["grid"], folders["weights"], c["country_id"])
        plan, moved = allocate_country_tiles(pairs, tile_ids, weight, iso2, policy, seed, grid)
        ALLOC_PLAN.write(folders["plan"], iso2, plan)
        SITE_LINEAGE.write(folders["lineage"], iso2, _lineage(iso2, retained, arrivals))
        n = plan.column("n_sites").to_numpy()
        m = plan.column("merchant_id").to_numpy()
        t = plan.column("tile_id").to_numpy()
        first = np.flatnonzero(np.r_[True, m[1:] != m[:-1]])
        pair_total = np.add.reduceat(n, first)
        pair_max = np.maximum.reduceat(n, first)
        _, tile_load = np.unique(t, return_inverse=True)
        load = np.bincount(tile_load, weights=n)
        stats["plan_rows"] += plan.num_rows
        stats["south_sites"] += int(n[grid.south(t)].sum())
        stats["lone_sites_moved"] += moved
        stats["tiles_used"] += len(load)
        stats["max_sites_per_tile"] = max(stats["max_sites_per_tile"], int(load.max()))
        stats["max_share"] = max(stats["max_share"], float((pair_max / pair_total).max()))
    return stats


def _pairs(req: pa.Table) -> Pairs:
    """S3's pairs as arrays, countries as indices into the sorted reference codes (S3 refused
    any other code)."""
    codes = pa.array(refdata.countries().iso2.tolist(), pa.string())

    def index(column: str) -> NDArray[np.int64]:
        return pc.index_in(req.column(column), value_set=codes).to_numpy(zero_copy_only=False).astype(np.int64)

    return Pairs(
        req.column("merchant_id").to_numpy().astype(np.uint64),
        index("legal_country_iso"),
        req.column("n_sites").to_numpy().astype(np.int64),
        index("home_country_iso"),
    )


def allocate_countries(ctx: StateContext, pairs: Pairs) -> Allocation:
    """S4(a) by the policy's mode, on S2's country mass vector."""
    vector = mass.CountryVector.from_columns(COUNTRY_MASS.read(ctx.inputs["country_mass"]).to_pydict())
    return mode_of(ctx.policies.s4_alloc_plan.country_allocation).allocate(pairs, vector, ctx.seed)


def _by_country(
    pairs: Pairs, allocation: Allocation, wanted: list[str]
) -> tuple[dict[str, tuple[NDArray[np.uint64], NDArray[np.int64]]], dict[str, Moves]]:
    """Per destination country: the 1A pairs' retained counts and the move runs arriving."""
    codes = refdata.countries().iso2
    moves = allocation.moves
    kept = np.flatnonzero(allocation.kept > 0)
    kept = kept[np.argsort(pairs.country[kept], kind="stable")]  # merchant order kept inside
    runs = np.argsort(moves.dst_country, kind="stable")
    kept_c, runs_c = pairs.country[kept], moves.dst_country[runs]
    retained, arrivals = {}, {}
    for iso2 in wanted:
        cid = int(np.searchsorted(codes, iso2))
        rows = kept[np.searchsorted(kept_c, cid) : np.searchsorted(kept_c, cid, side="right")]
        retained[iso2] = (pairs.merchant[rows], allocation.kept[rows])
        arrivals[iso2] = moves.take(runs[np.searchsorted(runs_c, cid) : np.searchsorted(runs_c, cid, side="right")])
    return retained, arrivals


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    pairs = _pairs(S3_REQUIREMENTS.read(ctx.inputs["s3_requirements"]))
    allocation = allocate_countries(ctx, pairs)
    codes = refdata.countries().iso2
    plan_folder = out["s4_alloc_plan"]
    order = np.lexsort((allocation.merchant, allocation.country))
    country_of = codes[allocation.country[order]]
    bounds = np.flatnonzero(np.r_[True, country_of[1:] != country_of[:-1], True])
    wanted = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):  # pair-level: written by the driver
        rows = order[lo:hi]
        iso2 = str(country_of[lo])
        table = pa.table(
            {
                "merchant_id": allocation.merchant[rows],
                "legal_country_iso": pa.array([iso2]).take(np.zeros(len(rows), dtype=np.int64)),
                "n_sites": allocation.n_sites[rows],
            }
        )
        COUNTRY_PAIRS.write(plan_folder, iso2, table)
        wanted.append(iso2)
    folders = {
        "plan": plan_folder,
        "lineage": out["site_lineage"],
        "grid": ctx.inputs["tile_grid"],
        "weights": ctx.inputs["tile_weights"],
    }
    retained, arrivals = _by_country(pairs, allocation, wanted)
    country_row = {c["iso2"]: c for c in TILE_GRID.countries(ctx.inputs["tile_grid"]).to_pylist()}
    sites = np.bincount(allocation.country, weights=allocation.n_sites, minlength=len(codes))
    policy = ctx.policies.s4_alloc_plan.tile_allocation
    scratch = plan_folder / ".scratch"
    scratch.mkdir()
    tasks = []
    for i, batch in enumerate(
        ctx.execution.country_batches({c: int(sites[np.searchsorted(codes, c)]) for c in wanted})
    ):
        inputs = scratch / f"batch-{i:05d}.npz"
        _save_batch(inputs, batch, retained, arrivals)
        tasks.append(
            dask.delayed(_batch_task)(folders, [country_row[c] for c in batch], inputs, policy, ctx.seed, ctx.grid)
        )
    results = compute(tasks)
    shutil.rmtree(scratch)
    return {
        "plan_rows": sum(r["plan_rows"] for r in results),
        **allocation.stats,
        "max_tile_share_of_pair": round(max((r["max_share"] for r in results), default=0.0), 4),
        "lone_sites_moved": sum(r["lone_sites_moved"] for r in results),
        "south_sites": sum(r["south_sites"] for r in results),
        "tiles_used": sum(r["tiles_used"] for r in results),
        "max_sites_per_tile": max((r["max_sites_per_tile"] for r in results), default=0),
        "tasks": len(tasks),
    }
