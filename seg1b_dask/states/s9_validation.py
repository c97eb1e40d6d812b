"""S9 validation: structural parity and realism over every row of ``site_locations``.

The bundle declares the grade it targets (``s9_validation.yaml``); the 1B bundle is sealed
with ``_passed.flag`` only when every structural check passes and, for a target grade, every
per-seed gate of that grade (with the B+ bootstrap bounds) passes: fail-closed. Every gate
is recorded in ``realism.json`` with threshold, observed value, margin and breach reason."""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pyarrow.compute as pc
import scipy.sparse
from numpy.typing import NDArray

from seg1b_dask.core import metrics, rng
from seg1b_dask.core.grid import Grid
from seg1b_dask.engine.context import StateContext
from seg1b_dask.engine.execution import compute
from seg1b_dask.grading import gates as grading
from seg1b_dask.grading import scoring
from seg1b_dask.io import refdata
from seg1b_dask.io.datasets import ALLOC_PLAN, S3_REQUIREMENTS, SITE_LOCATIONS
from seg1b_dask.io.grids import TILE_GRID
from seg1b_dask.io.hashing import seal_bundle
from seg1b_dask.io.lineage import check_tokens, read_manifest, replaced, write_json
from seg1b_dask.model import sentinel
from seg1b_dask.model.containment import inside_country
from seg1b_dask.model.nearest import SortedBands, nearest_neighbour_summary, write_sorted_by_latitude
from seg1b_dask.policies.gates import GatesPolicy

SITES_PER_BUCKET = 1 << 20  # coordinates per duplicate-check bucket
# The columns the checks read: never the GeoParquet geometry, which repeats lon_deg/lat_deg.
_COLUMNS = ["merchant_id", "legal_country_iso", "site_order", "lon_deg", "lat_deg"]


def country_checks(
    merchant: np.ndarray, site_order: np.ndarray, lon: np.ndarray, lat: np.ndarray, expected: dict[int, int]
) -> dict[str, int]:
    """Structural counts of one country's rows against its S4 plan (``expected``: sites per
    merchant): pairs found/differing, duplicate keys, broken site_order runs, bad coordinates."""
    order = np.lexsort((site_order, merchant))
    m, s = merchant[order], site_order[order]
    same = m[1:] == m[:-1]
    starts = np.flatnonzero(np.r_[True, ~same])
    sizes = np.diff(np.r_[starts, len(m)])
    runs_ok = np.array_equal(s, np.arange(len(m)) - np.repeat(starts, sizes) + 1) if len(m) else True
    got = dict(zip(m[starts].tolist(), sizes.tolist(), strict=True))
    valid = np.isfinite(lon) & np.isfinite(lat) & (np.abs(lon) <= 180.0) & (np.abs(lat) <= 90.0)
    return {
        "pairs_expected": len(expected),
        "pairs_found": len(got),
        "pairs_differing": len(set(got.items()) ^ set(expected.items())),
        "duplicates": int((same & (s[1:] == s[:-1])).sum()),
        "broken_runs": int(not runs_ok),
        "invalid_coordinates": int((~valid).sum()),
    }


def _batch_task(
    folders: dict[str, Path],
    countries: list[str],
    gates: GatesPolicy,
    watched: list[str],
    grid: Grid,
    batch: int,
    buckets: int,
) -> dict[str, Any]:
    """Check a batch of countries, add up its share of the scorecard (the collapse sentinel
    of those ``watched``, against each one's cells on the tile grid), and drop its
    coordinates into hash buckets for the global duplicate check and, sorted by latitude,
    into one file for the nearest-neighbour bands."""
    ref = refdata.countries()
    totals: dict[str, int] = {}
    frames = []
    outside = 0
    for iso2 in countries:
        table = SITE_LOCATIONS.read(folders["egress"], [iso2], _COLUMNS)
        plan = ALLOC_PLAN.read(folders["plan"], [iso2], ["merchant_id", "n_sites"])
        ids, counts = np.unique(plan.column("merchant_id").to_numpy(), return_inverse=True)
        expected = dict(
            zip(ids.tolist(), np.bincount(counts, plan.column("n_sites").to_numpy()).astype(int).tolist(), strict=True)
        )
        frame = scoring.SiteFrame.from_table(table)
        site_order = table.column("site_order").to_numpy()
        for k, v in country_checks(frame.merchant_id, site_order, frame.lon, frame.lat, expected).items():
            totals[k] = totals.get(k, 0) + v
        cid = np.full(len(frame.lon), ref.country_id(iso2), dtype=np.int16)
        outside += int((~inside_country(frame.lon, frame.lat, cid)).sum())
        frames.append(frame)
    sites = scoring.SiteFrame(
        *(np.concatenate([getattr(f, k) for f in frames]) for k in ("merchant_id", "iso2", "lon", "lat"))
    )
    coords = np.column_stack([sites.lon, sites.lat])
    bucket = rng.hash64(np.uint64(0), coords.view(np.uint64)[:, 0], coords.view(np.uint64)[:, 1]) % np.uint64(buckets)
    for b in range(buckets):
        with replaced(folders["scratch"] / f"bucket-{b:05d}-batch-{batch:05d}.npy") as tmp, tmp.open("wb") as fh:
            np.save(fh, coords[bucket == b])
    write_sorted_by_latitude(folders["scratch"] / f"by-latitude-{batch:05d}.npy", sites.lon, sites.lat)
    totals["outside_country"] = outside
    return {
        "counts": totals,
        "figures": scoring.site_figures(
            sites,
            gates,
            watched,
            functools.partial(sentinel.grid_reference, folders["tile_grid"], folders["tile_weights"], grid),
        ),
    }


def _repeats_task(scratch: Path, bucket: int) -> int:
    """Sites whose exact coordinates repeat another site's, within one hash bucket."""
    parts = [np.load(p) for p in sorted(scratch.glob(f"bucket-{bucket:05d}-*.npy"))]
    coords = np.concatenate(parts) if parts else np.zeros((0, 2))
    order = np.lexsort((coords[:, 1], coords[:, 0]))
    c = coords[order]
    return int(((c[1:, 0] == c[:-1, 0]) & (c[1:, 1] == c[:-1, 1])).sum())


@dataclass(frozen=True)
class Requirements:
    """What S9 checks against S3's pairs, read as number columns (never the country codes):
    each merchant's 1A total, how many sites in all, the largest 1A footprint."""

    merchant_ids: NDArray[np.uint64]
    merchant_totals: NDArray[np.int64]
    sites: int
    largest_footprint: int

    @classmethod
    def read(cls, folder: Path) -> Requirements:
        req = S3_REQUIREMENTS.read(folder, ["merchant_id", "merchant_total", "n_sites"])
        pair_merchant = req.column("merchant_id").to_numpy()
        ids, first = np.unique(pair_merchant, return_index=True)
        return cls(
            ids,
            req.column("merchant_total").to_numpy()[first],
            int(pc.sum(req.column("n_sites")).as_py() or 0),
            metrics.largest_footprint(pair_merchant),
        )


def _merchant_totals_ok(merchants: NDArray[np.uint64], sites: NDArray[np.int64], req: Requirements) -> bool:
    """Every merchant of S3 holds exactly its 1A total of sites, and no other merchant has any
    (from the sites per (merchant, country) pair the scorecard counts)."""
    ids, inverse = np.unique(merchants, return_inverse=True)
    got = np.bincount(inverse, sites).astype(np.int64)
    return bool(np.array_equal(ids, req.merchant_ids) and np.array_equal(got, req.merchant_totals))


def _bootstrap_task(matrix_path: Path, seed: int, stream: int, replicates: int) -> np.ndarray:
    matrix = scipy.sparse.load_npz(matrix_path)
    return grading.bootstrap_values(matrix, seed, stream, replicates)


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    egress = ctx.inputs["site_locations"]
    check_tokens(egress)
    folder = out["validation_bundle"]
    scratch = folder / ".scratch"
    scratch.mkdir()
    folders = {
        "egress": egress,
        "plan": ctx.inputs["s4_alloc_plan"],
        "tile_grid": ctx.inputs["tile_grid"],
        "tile_weights": ctx.inputs["tile_weights"],
        "scratch": scratch,
    }
    rows = SITE_LOCATIONS.row_counts(egress)
    buckets = max(1, -(-sum(rows.values()) // SITES_PER_BUCKET))
    gates = ctx.policies.gates
    country_batches = ctx.execution.country_batches(rows)
    watched = sentinel.watched(rows)
    parts = compute(
        [
            dask.delayed(_batch_task)(folders, b, gates, watched, ctx.grid, i, buckets)
            for i, b in enumerate(country_batches)
        ]
    )
    repeats = sum(compute([dask.delayed(_repeats_task)(scratch, b) for b in range(buckets)]))
    c = {k: sum(p["counts"][k] for p in parts) for k in parts[0]["counts"]} if parts else {}
    figures = scoring.SiteFigures.merge([p["figures"] for p in parts])
    del parts  # pair-level: the driver keeps one copy
    req = Requirements.read(ctx.inputs["s3_requirements"])
    n = figures.sites
    planned = set(ALLOC_PLAN.countries(ctx.inputs["s4_alloc_plan"]))
    checks = {
        "pair_parity": {
            "passed": c.get("pairs_differing", 0) == 0 and planned == set(rows),
            "pairs_expected": c.get("pairs_expected", 0),
            "pairs_found": c.get("pairs_found", 0),
            "pairs_differing": c.get("pairs_differing", 0),
        },
        "merchant_totals": {
            "passed": bool(c) and _merchant_totals_ok(figures.pair_merchant, figures.pair_sites, req),
            "merchants": len(req.merchant_ids),
        },
        "unique_keys": {"passed": c.get("duplicates", 0) == 0, "duplicates": c.get("duplicates", 0)},
        "site_order_runs": {"passed": c.get("broken_runs", 0) == 0},
        "valid_coordinates": {
            "passed": c.get("invalid_coordinates", 0) == 0,
            "share": 1.0 - c.get("invalid_coordinates", 0) / n if n else 1.0,
        },
        "point_in_country": {
            "passed": c.get("outside_country", 0) == 0,
            "share": 1.0 - c.get("outside_country", 0) / n if n else 1.0,
        },
        "distinct_coordinates": {"passed": repeats == 0, "repeats": repeats},
        "row_count": {"passed": n == req.sites, "rows": n},
    }
    country_table = TILE_GRID.countries(ctx.inputs["tile_grid"], ["iso2", "region", "eligible"])
    region_of = dict(
        zip(country_table.column("iso2").to_pylist(), country_table.column("region").to_pylist(), strict=True)
    )
    eligible = int(np.asarray(country_table.column("eligible").to_pylist()).sum())
    target = ctx.policies.s9_validation.target_grade
    # The merchant bootstrap (B+'s bounds, recorded for every target: the scorecard grades
    # any run up to B+) runs as blocks of replicates beside the nearest-neighbour bands; its
    # (merchant, country) pairs reach the tasks by a scratch file, not the graph.
    extra, estimate = [], {}
    if n:
        matrix_path = scratch / "bootstrap-matrix.npz"
        matrix, _ = scoring.merchant_country_matrix(figures.pair_merchant, figures.pair_country, figures.pair_sites)
        scipy.sparse.save_npz(matrix_path, matrix, compressed=False)
        estimate = grading.bootstrap_estimate(matrix)
        del matrix
        extra = [
            dask.delayed(_bootstrap_task)(matrix_path, gates.bootstrap_seed + ctx.seed, stream, k)
            for stream, k in grading.bootstrap_blocks(gates.bootstrap_replicates)
        ]
    nn, extras = nearest_neighbour_summary(
        SortedBands(sorted(scratch.glob("by-latitude-*.npy"))), n, figures.lat_histogram, scratch, alongside=extra
    )
    shutil.rmtree(scratch)
    card = scoring.assemble_scorecard(
        figures, nn, region_of, eligible, ctx.baseline_nn_ratio, req.largest_footprint, gates.plausibility
    )
    bootstrap = grading.bootstrap_bound(estimate, np.concatenate(extras)) if extras else None
    if bootstrap is not None:
        card["bootstrap_upper_95"] = bootstrap
    structural_ok = all(c["passed"] for c in checks.values())
    realism: list[dict[str, Any]] = []
    if target != "none":
        realism = grading.gate_table(card, gates, target, bootstrap)
    sealed = structural_ok and all(r["passed"] for r in realism)
    write_json(folder / "checks.json", checks)
    write_json(
        folder / "realism.json", {"target_grade": target, "baseline_nn_ratio": ctx.baseline_nn_ratio, "gates": realism}
    )
    # The egress bytes this bundle vouches for: scorers refuse anything else.
    write_json(folder / "egress.json", {"site_locations_sha256": read_manifest(egress)["content_sha256"]})
    scoring.write_scorecard(card, folder)
    if sealed:
        seal_bundle(
            folder,
            {
                "segment": "1B",
                "seed": ctx.seed,
                "parameter_hash": ctx.tokens.parameter_hash,
                "manifest_fingerprint": ctx.tokens.manifest_fingerprint,
                "target_grade": target,
            },
        )
    failed = sorted(k for k, c in checks.items() if not c["passed"])
    return {
        "passed": structural_ok,
        "sealed": sealed,
        "target_grade": target,
        "failed_checks": failed,
        "failed_gates": [r["gate"] for r in realism if not r["passed"]],
        "metrics": card["metrics"],
        "region_share": card["region_share"],
    }
