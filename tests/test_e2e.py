"""End-to-end runs on the real vendored data: the baseline posture, the remediation, determinism."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import MakeBundle, SharedRun

from seg1b_dask.chain.registry import first_dirty_state, rerun_matrix
from seg1b_dask.chain.runner import BASELINE_POLICIES, DEFAULT_POLICIES, RunResult, run_seed
from seg1b_dask.core.grid import Grid
from seg1b_dask.engine.execution import Execution
from seg1b_dask.grading.scoring import compute_scorecard, load_sites
from seg1b_dask.io import upstream
from seg1b_dask.io.datasets import ALLOC_PLAN, SITE_LINEAGE, SITE_LOCATIONS
from seg1b_dask.io.grids import TILE_GRID
from seg1b_dask.io.hashing import verify_bundle
from seg1b_dask.io.lineage import read_manifest
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.model import sentinel
from seg1b_dask.policies.bundle import load_bundle

pytestmark = pytest.mark.e2e


def _digests(result: RunResult) -> dict[str, str]:
    return {name: read_manifest(path)["content_sha256"] for name, path in result.outputs.items()}


@pytest.fixture(scope="module")
def reference(seed42_warm: SharedRun) -> RunResult:
    """Seed 42's baseline run (the session's, read-only)."""
    return seed42_warm.result


@pytest.fixture(scope="module")
def remediation(seed42_green: SharedRun) -> RunResult:
    """Seed 42's run of the shipped bundle, graded against its pinned baseline (the session's, read-only)."""
    return seed42_green.result


def _baseline_nn_ratio(result: RunResult) -> float:
    """The baseline ratio S9 graded ``result`` against (a sealed input of the run)."""
    ratio = json.loads((result.run_dir / "run.json").read_text())["baseline_nn_ratio"]
    assert isinstance(ratio, float) and ratio > 10
    return ratio


def _rows_digest(result: RunResult) -> str:
    import hashlib

    sites = SITE_LOCATIONS.read(result.outputs["site_locations"])
    sites = sites.sort_by(
        [("merchant_id", "ascending"), ("legal_country_iso", "ascending"), ("site_order", "ascending")]
    )
    digest = hashlib.sha256()
    for column in ("merchant_id", "site_order", "lon_deg", "lat_deg"):
        digest.update(np.ascontiguousarray(sites.column(column).to_numpy()).tobytes())
    digest.update("|".join(sites.column("legal_country_iso").to_pylist()).encode())
    return digest.hexdigest()


def test_baseline_rows_are_unchanged(reference: RunResult) -> None:
    """Every key of baseline seed 42 keeps exactly its lon_deg and lat_deg."""
    assert _rows_digest(reference) == "71a4e4b495dc5e0ec41b7ace96babd7865ed64fecfb7285a7666188ceb4e6396"


def test_remediation_seals_b_plus_and_reports_its_price(remediation: RunResult) -> None:
    v = remediation.validation
    assert v["passed"] and v["sealed"] and v["target_grade"] == "B_PLUS" and v["failed_gates"] == []
    realism = json.loads((remediation.outputs["validation_bundle"] / "realism.json").read_text())
    assert {r["gate"] for r in realism["gates"]} >= {
        "country_gini",
        "top1_share",
        "bootstrap_upper:top1_share",
        "region_floor:Africa",
    }
    assert all(r["margin"] >= 0 for r in realism["gates"])
    m = v["metrics"]
    assert m["eligible_country_nonzero_share"] >= 0.92 and m["sentinel_flagged"] == 0
    assert m["merchant_countries_median"] <= 5 and m["near_city_share"] >= 0.75
    s4 = next(s.stats for s in remediation.states if s.id == "S4")
    assert 0 < s4["relocated_share"] < 1 and s4["merchants_lost_home"] == 0
    # The lineage maps every 1A stub once onto a distinct 1B key.
    lineage = SITE_LINEAGE.read(remediation.outputs["site_lineage"])
    assert lineage.num_rows == 31257
    keys = set(
        zip(*(lineage.column(c).to_pylist() for c in ("merchant_id", "legal_country_iso", "site_order")), strict=True)
    )
    assert len(keys) == 31257
    moved = sum(
        a != b
        for a, b in zip(
            lineage.column("source_country_iso").to_pylist(),
            lineage.column("legal_country_iso").to_pylist(),
            strict=True,
        )
    )
    assert moved / 31257 == pytest.approx(s4["relocated_share"], abs=1e-6)


def test_a_failing_target_grade_is_not_sealed_and_grades_red(seed42_green: SharedRun, tmp_path: Path) -> None:
    """Fail-closed: against a baseline ratio the remediation cannot beat, S9 (the only state
    whose cache key moves) records the breach and writes no flag; the scorer reports S9's
    record and grades RED on that gate. The ratio is a sealed input: a new fingerprint, no conflict."""
    from seg1b_dask.io.hashing import FLAG_NAME
    from seg1b_dask.lanes.score import score_run

    root = seed42_green.copy(tmp_path / "root").root
    failing = run_seed(root=root, seed=42, policies=DEFAULT_POLICIES, baseline_nn_ratio=1.0)
    assert [s.id for s in failing.states if not s.reused] == ["S0", "S9"]  # the gate always runs
    v = failing.validation
    assert v["passed"] and not v["sealed"] and v["failed_gates"] == ["nn_contraction"]
    assert not (failing.outputs["validation_bundle"] / FLAG_NAME).exists()
    realism = json.loads((failing.outputs["validation_bundle"] / "realism.json").read_text())
    breach = next(r for r in realism["gates"] if r["gate"] == "nn_contraction")
    assert breach["margin"] < 0 and breach["breach"].startswith("-")
    scored = score_run(root, failing.run_dir)
    assert scored.grade.outcome == "RED" and scored.card["sealed"] is False


def test_standin_matches_facts_for_seed_42() -> None:
    cat = upstream.synthesize(42)
    assert len(np.unique(cat.merchant_id)) == 1238
    assert int(cat.n_outlets.sum()) == 31257
    assert len(cat.n_outlets) == 2597
    totals = {c: int(cat.n_outlets[cat.legal_country_iso == c].sum()) for c in np.unique(cat.legal_country_iso)}
    assert len(totals) == 77
    assert {c: totals[c] for c in upstream.TOP_COUNTRIES} == upstream.TOP_COUNTRIES
    assert totals["MC"] == 140
    _, inv = np.unique(cat.merchant_id, return_inverse=True)
    sizes = np.bincount(inv, weights=cat.n_outlets)
    assert sizes.min() >= 2 and 14 <= np.median(sizes) <= 18
    assert 0.35 <= (np.bincount(inv) > 1).mean() <= 0.40
    other = upstream.synthesize(7)
    assert int(other.n_outlets.sum()) != 31257 and len(np.unique(other.legal_country_iso)) == 77


def test_baseline_reproduces_old_engine_country_metrics(reference: RunResult) -> None:
    m = reference.validation["metrics"]
    assert reference.validation["passed"]
    assert m["active_countries"] == 77 and m["sites"] == 31257
    assert round(m["country_gini"], 4) == 0.7528
    assert (round(m["top1_share"], 4), round(m["top5_share"], 4), round(m["top10_share"], 4)) == (
        0.1366,
        0.3933,
        0.5974,
    )
    assert (m["top1_k"], m["top5_k"], m["top10_k"]) == (1, 4, 8)
    assert 0.05 <= m["southern_hemisphere_share"] <= 0.07
    assert 220 <= m["eligible_countries"] <= 240


def test_outputs_are_sealed_and_complete(reference: RunResult) -> None:
    bundle = reference.outputs["validation_bundle"]
    index, _ = verify_bundle(bundle)
    assert index["manifest_fingerprint"] == reference.tokens.manifest_fingerprint
    checks = json.loads((bundle / "checks.json").read_text())
    assert all(c["passed"] for c in checks.values()) and checks["point_in_country"]["share"] == 1.0
    sites = SITE_LOCATIONS.read(reference.outputs["site_locations"])
    kept = ["merchant_id", "legal_country_iso", "site_order", "lon_deg", "lat_deg"]
    assert sites.column_names == [*kept, "geometry", "bbox"]  # GeoParquet's columns follow the kept ones
    assert sites.num_rows == 31257
    path = str(reference.outputs["site_locations"])
    assert f"seed=42/manifest_fingerprint={reference.tokens.manifest_fingerprint}" in path


def test_baseline_keeps_the_legacy_stripes(reference: RunResult) -> None:
    """Legacy tie-breaking by tile_id gives every merchant of a country the same row run."""
    plan = ALLOC_PLAN.read(reference.outputs["s4_alloc_plan"]).to_pandas()
    de = plan[plan.legal_country_iso == "DE"]
    first = de.groupby("merchant_id").tile_id.min()
    assert len(first) > 300 and first.nunique() <= 0.05 * len(first)


def test_a_uniform_placement_is_clear_against_every_countrys_people(remediation: RunResult) -> None:
    """The sentinel's reference under blend_v2 is a country's people (its tile weights). For
    every eligible country a uniform placement, at any number of sites from 10³ to 10⁷,
    occupies at least the rows and columns the people's draws do (well above 15 %) and is
    within a factor 12 of their spread along every axis: never flagged, in expectation."""
    grid = Grid(load_bundle(DEFAULT_POLICIES, refdata_version()).grid.resolution_arcsec)
    table = TILE_GRID.countries(remediation.outputs["tile_grid"], ["country_id", "eligible"]).to_pydict()
    worst_share, worst_anisotropy = math.inf, 0.0
    for cid, eligible in zip(table["country_id"], table["eligible"], strict=True):
        if not eligible:
            continue
        tiles, weight = TILE_GRID.country_cells(
            remediation.outputs["tile_grid"], remediation.outputs["tile_weights"], cid
        )
        rows, cols = np.divmod(tiles, grid.ncols)
        people = sentinel.CountryReference.from_cells(grid, rows, cols, weight.astype(np.float64))
        uniform = sentinel.CountryReference.from_cells(grid, rows, cols)
        for n in (10**3, 10**5, 10**7):
            for axis in ("row_p", "col_p"):
                share = sentinel.expected_distinct(getattr(uniform, axis), n) / sentinel.expected_distinct(
                    getattr(people, axis), n
                )
                worst_share = min(worst_share, share)
        worst_anisotropy = max(worst_anisotropy, sentinel.relative_anisotropy(uniform.covariance, people.covariance))
    assert worst_share > 0.5 and worst_anisotropy < sentinel.MAX_RELATIVE_ANISOTROPY / 2


def test_s9_and_the_in_memory_scorer_measure_the_same_sentinel_and_nearest_neighbours(reference: RunResult) -> None:
    """S9 measures each country against its cells on the published tile grid, batch by batch;
    the in-memory scorer given the same grid finds the same figures, and sentinel.csv
    carries every one of them."""
    bundle = load_bundle(BASELINE_POLICIES, refdata_version())
    tile_grid = reference.outputs["tile_grid"]
    countries = TILE_GRID.countries(tile_grid, ["iso2", "region", "eligible"]).to_pydict()
    card = compute_scorecard(
        load_sites(reference.outputs["site_locations"]),
        dict(zip(countries["iso2"], countries["region"], strict=True)),
        sum(countries["eligible"]),
        None,
        bundle.gates,
        functools.partial(
            sentinel.grid_reference, tile_grid, reference.outputs["tile_weights"], Grid(bundle.grid.resolution_arcsec)
        ),
        11,  # the stand-in's largest merchant footprint
    )
    folder = reference.outputs["validation_bundle"]
    sealed = json.loads((folder / "scorecard.json").read_text())
    assert card["sentinel"] == sealed["sentinel"] and len(sealed["sentinel"]) == 10
    assert card["metrics"]["sentinel_flagged"] == sealed["metrics"]["sentinel_flagged"]
    # S9's nearest-neighbour summary (per band, no per-site array in the driver) is exact.
    for figure in ("nn_p50_km", "nn_p75_km", "nn_p90_km", "nn_p95_km", "nn_p99_km", "nn_ratio", "nn_histogram"):
        assert card["metrics"][figure] == sealed["metrics"][figure], figure
    header = (folder / "sentinel.csv").read_text().splitlines()[0]
    assert header.split(",") == ["legal_country_iso", *sentinel.FIGURES]


@pytest.mark.slow
def test_outputs_are_byte_identical_across_schedulers_and_chunks(
    remediation: RunResult, execution: Execution, tmp_path: Path
) -> None:
    reference = remediation
    ratio = _baseline_nn_ratio(reference)
    other = run_seed(root=tmp_path, seed=42, execution=execution, baseline_nn_ratio=ratio)
    assert other.tokens == reference.tokens
    assert not any(s.reused for s in other.states)
    assert _digests(other) == _digests(reference)
    parts = sorted(reference.outputs["site_locations"].rglob("part-*.parquet"))
    assert len(parts) >= reference.validation["metrics"]["active_countries"] > 200  # one part per country at least
    for part in parts:
        rel = part.relative_to(reference.outputs["site_locations"])
        assert (other.outputs["site_locations"] / rel).read_bytes() == part.read_bytes()


def test_rerun_matrix_is_what_the_cache_keys_do() -> None:
    """A change to any one policy file moves the cache key of exactly the states the matrix
    lists (S0, never cached, verifies afresh every run)."""
    from seg1b_dask.chain.registry import STATES
    from seg1b_dask.chain.runner import cache_keys
    from seg1b_dask.io.refdata import refdata_version
    from seg1b_dask.policies.bundle import load_bundle

    bundle = load_bundle(BASELINE_POLICIES, refdata_version())
    before = cache_keys(bundle, 42, "f" * 64, 1.0, "m")
    for policy, states in rerun_matrix().items():
        changed = bundle.model_copy(update={"digests": {**bundle.digests, policy: "0" * 64}})
        after = cache_keys(changed, 42, "f" * 64, 1.0, "m")
        moved = [s.id for s in STATES if s.cached and after[s.id] != before[s.id]]
        assert moved == states, policy


def test_cache_reuse_and_rerun_matrix(seed42_warm: SharedRun, make_bundle: MakeBundle, tmp_path: Path) -> None:
    reference = seed42_warm.result
    assert first_dirty_state({"s6_jitter"}) == "S6" and first_dirty_state({"gates"}) == "S9"
    assert rerun_matrix()["s2_tile_weights"] == ["S2", "S4", "S5", "S6", "S7", "S8", "S9"]  # S3 reads no S2 dataset
    root = seed42_warm.copy(tmp_path / "root").root
    again = run_seed(root=root, seed=42, policies=BASELINE_POLICIES)
    assert all(s.reused for s in again.states[1:]) and _digests(again) == _digests(reference)

    policies = make_bundle("baseline", s6_jitter={"jitter": {"max_attempts": 32}})
    assert load_bundle(policies, refdata_version()).s6_jitter.jitter.max_attempts == 32
    changed = run_seed(root=root, seed=42, policies=policies)
    assert [s.id for s in changed.states if s.reused] == ["S1", "S2", "S3", "S4", "S5"]
    assert changed.tokens.parameter_hash != reference.tokens.parameter_hash
    # Reused datasets carry the new tokens and the same bytes.
    assert read_manifest(changed.outputs["s4_alloc_plan"])["tokens"]["parameter_hash"] == changed.tokens.parameter_hash
    assert _digests(changed)["s4_alloc_plan"] == _digests(reference)["s4_alloc_plan"]
