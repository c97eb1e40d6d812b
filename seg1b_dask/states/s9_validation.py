"""S9 validation: structural parity and realism over every row of ``site_locations``.

The bundle declares the grade it targets (``s9_validation.yaml``); the 1B bundle is sealed
with ``_passed.flag`` only when every structural check passes and, for a target grade, every
per-seed gate of that grade (with the B+ bootstrap bounds) passes: fail-closed. Every gate
is recorded in ``realism.json`` with threshold, observed value, margin and breach reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask
import numpy as np
import pyarrow as pa

from .. import grading, refdata, scoring
from ..context import StateContext
from ..execution import batches, compute
from ..hashing import seal_bundle
from ..lineage import check_tokens, read_manifest, write_json
from ..tables import read_table
from .s7_synthesis import inside_country


def structural_checks(
    sites: pa.Table, expected_pairs: pa.Table, merchant_totals: dict[int, int], in_country: np.ndarray
) -> dict[str, dict]:
    """Parity, key uniqueness, site_order runs, coordinate validity, point-in-country."""
    merchant = sites.column("merchant_id").to_numpy()
    iso = np.asarray(sites.column("legal_country_iso").to_pylist(), dtype="U2")
    order_col = sites.column("site_order").to_numpy()
    lon = sites.column("lon_deg").to_numpy()
    lat = sites.column("lat_deg").to_numpy()
    _, country = np.unique(iso, return_inverse=True)
    order = np.lexsort((order_col, country, merchant))
    m, c, s = merchant[order], country[order], order_col[order]
    same_pair = (m[1:] == m[:-1]) & (c[1:] == c[:-1])
    duplicates = int((same_pair & (s[1:] == s[:-1])).sum())
    starts = np.flatnonzero(np.r_[True, ~same_pair])
    sizes = np.diff(np.r_[starts, len(m)])
    runs_ok = bool(np.array_equal(s, np.arange(len(m)) - np.repeat(starts, sizes) + 1)) if len(m) else True
    iso_sorted = iso[order]
    got = {(int(m[i]), str(iso_sorted[i])): int(n) for i, n in zip(starts, sizes, strict=True)}
    want = {
        (int(a), str(b)): int(n)
        for a, b, n in zip(
            expected_pairs.column("merchant_id").to_pylist(),
            expected_pairs.column("legal_country_iso").to_pylist(),
            expected_pairs.column("n_sites").to_pylist(),
            strict=True,
        )
    }
    per_merchant: dict[int, int] = {}
    for (mid, _), n in got.items():
        per_merchant[mid] = per_merchant.get(mid, 0) + n
    valid = np.isfinite(lon) & np.isfinite(lat) & (np.abs(lon) <= 180.0) & (np.abs(lat) <= 90.0)
    coord_order = np.lexsort((lat, lon))
    same_coord = int(
        ((lon[coord_order][1:] == lon[coord_order][:-1]) & (lat[coord_order][1:] == lat[coord_order][:-1])).sum()
    )
    return {
        "pair_parity": {
            "passed": got == want,
            "pairs_expected": len(want),
            "pairs_found": len(got),
            "pairs_differing": len(set(got.items()) ^ set(want.items())),
        },
        "merchant_totals": {"passed": per_merchant == merchant_totals, "merchants": len(merchant_totals)},
        "unique_keys": {"passed": duplicates == 0, "duplicates": duplicates},
        "site_order_runs": {"passed": runs_ok},
        "valid_coordinates": {"passed": bool(valid.all()), "share": float(valid.mean()) if len(valid) else 1.0},
        "point_in_country": {
            "passed": bool(in_country.all()),
            "share": float(in_country.mean()) if len(in_country) else 1.0,
        },
        "distinct_coordinates": {"passed": same_coord == 0, "repeats": same_coord},
    }


def _pic_task(egress: str, countries: list[str]) -> np.ndarray:
    """Point-in-country for every row (all part files) of the given countries."""
    table = read_table(
        Path(egress),
        columns=["legal_country_iso", "lon_deg", "lat_deg"],
        filters=[("legal_country_iso", "in", countries)],
    )
    ref = refdata.countries()
    cid = np.asarray([ref.country_id(c) for c in table.column("legal_country_iso").to_pylist()], dtype=np.int16)
    return inside_country(table.column("lon_deg").to_numpy(), table.column("lat_deg").to_numpy(), cid)


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    egress = ctx.inputs["site_locations"]
    check_tokens(egress)
    sites = read_table(egress)
    req = read_table(ctx.inputs["s3_requirements"])
    plan = read_table(ctx.inputs["s4_alloc_plan"])
    expected = (
        plan.group_by(["merchant_id", "legal_country_iso"])
        .aggregate([("n_sites", "sum")])
        .rename_columns(["merchant_id", "legal_country_iso", "n_sites"])
    )
    totals = dict(zip(req.column("merchant_id").to_pylist(), req.column("merchant_total").to_pylist(), strict=True))
    countries = sorted(set(sites.column("legal_country_iso").to_pylist()))
    results = compute(
        [dask.delayed(_pic_task)(str(egress), b) for b in batches(countries, ctx.execution.country_batch)]
    )
    in_country = np.concatenate(results) if results else np.zeros(0, bool)
    checks = structural_checks(sites, expected, totals, in_country)
    checks["row_count"] = {"passed": len(in_country) == sites.num_rows, "rows": sites.num_rows}
    country_table = read_table(ctx.inputs["tile_grid"] / "country_tiles", columns=["iso2", "region", "eligible"])
    region_of = dict(
        zip(country_table.column("iso2").to_pylist(), country_table.column("region").to_pylist(), strict=True)
    )
    eligible = int(np.asarray(country_table.column("eligible").to_pylist()).sum())
    frame = scoring.SiteFrame.from_table(sites)
    gates = ctx.policies.gates
    card = scoring.compute_scorecard(
        frame, region_of, eligible, ctx.baseline_nn_ratio, gates, ctx.grid.deg, source=str(egress)
    )
    structural_ok = all(c["passed"] for c in checks.values())
    target = ctx.policies.s9_validation.target_grade
    realism: list[dict[str, Any]] = []
    if target != "none":
        bootstrap = None
        if target == "B_PLUS":
            matrix, _ = scoring.merchant_country_matrix(frame)
            bootstrap = grading.bootstrap_upper(matrix, gates.bootstrap_replicates, gates.bootstrap_seed + ctx.seed)
            card["bootstrap_upper_95"] = bootstrap
        realism = grading.gate_table(card, gates, target, bootstrap)
    sealed = structural_ok and all(r["passed"] for r in realism)
    folder = out["validation_bundle"]
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
