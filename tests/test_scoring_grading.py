"""The scorer's exactness, the grading rules and the run discipline."""

from __future__ import annotations

import json
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from seg1b_dask.chain.runner import BASELINE_POLICIES
from seg1b_dask.core import metrics, quantiles
from seg1b_dask.errors import Seg1BError
from seg1b_dask.grading import gates as grading
from seg1b_dask.grading import scoring
from seg1b_dask.io import discipline, refdata
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.model import nearest
from seg1b_dask.model.nearest import (
    LAT_BINS,
    ArrayBands,
    SortedBands,
    band_arcs,
    nearest_neighbour_km_chunked,
    nearest_neighbour_summary,
    write_sorted_by_latitude,
)
from seg1b_dask.plan import closure
from seg1b_dask.policies.bundle import load_bundle
from seg1b_dask.states.triage import triage_hints

HINTS = triage_hints(load_bundle(BASELINE_POLICIES, "v"))


def _grade(*args: object, **kwargs: object) -> grading.GradeReport:
    """The grading rules with the baseline bundle's triage words."""
    return grading.grade(*args, hints=HINTS, **kwargs)  # type: ignore[arg-type]


def _exact(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Brute force over every pair: chord lengths (accurate at short range), then arcs."""
    xyz = metrics.unit_vectors(lon, lat)
    chord = np.sqrt(((xyz[:, None, :] - xyz[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(chord, np.inf)
    return np.sort(2.0 * np.arcsin(chord.min(axis=1) / 2.0) * metrics.EARTH_RADIUS_KM)


def _clouds(kind: str, n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(zlib.crc32(kind.encode()))  # the same cloud in every process
    if kind == "random":
        return g.uniform(-180, 180, n), np.degrees(np.arcsin(g.uniform(-1, 1, n)))
    if kind == "clustered":
        centres = g.uniform([-170, -60], [170, 60], size=(12, 2))
        pick = g.integers(0, 12, n)
        return ((centres[pick, 0] + g.normal(0, 0.05, n) + 180) % 360) - 180, np.clip(
            centres[pick, 1] + g.normal(0, 0.05, n), -89, 89
        )
    if kind == "polar":
        return g.uniform(-180, 180, n), np.concatenate([g.uniform(88.5, 90, n // 2), g.uniform(-90, -88.5, n - n // 2)])
    if kind == "antimeridian":
        return ((180 + g.normal(0, 0.3, n) + 180) % 360) - 180, g.uniform(-30, 30, n)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["random", "clustered", "polar", "antimeridian"])
@pytest.mark.parametrize("per_band", [100, 400, 10_000])
def test_chunked_nn_equals_exact_global(kind: str, per_band: int) -> None:
    lon, lat = _clouds(kind)
    got = nearest_neighbour_km_chunked(lon, lat, sites_per_band=per_band)
    np.testing.assert_allclose(got, _exact(lon, lat), rtol=1e-9, atol=1e-9)


def test_degenerate_inputs_are_undefined_not_crashes() -> None:
    lone = nearest_neighbour_km_chunked(np.array([3.0]), np.array([4.0]))
    assert np.isnan(metrics.nn_metrics(metrics.NNSummary.of(lone))["nn_ratio"])
    # Many sites on one latitude leave empty bands between equal quantile edges.
    lon = np.linspace(-170, 170, 50)
    lat = np.r_[np.zeros(45), np.linspace(10, 50, 5)]
    np.testing.assert_allclose(nearest_neighbour_km_chunked(lon, lat, sites_per_band=4), _exact(lon, lat), rtol=1e-9)


def test_duplicate_sites_give_zero_and_p50_zero_fails() -> None:
    lon = np.array([1.0, 1.0, 5.0, 5.0, 9.0])
    lat = np.zeros(5)
    nn = nearest_neighbour_km_chunked(lon, lat, sites_per_band=2)
    assert (nn[:4] == 0).all()
    figures = metrics.nn_metrics(metrics.NNSummary.of(nn))
    assert np.isnan(figures["nn_ratio"])
    card = {
        "metrics": {
            "country_gini": 0.5,
            "top10_share": 0.3,
            "top5_share": 0.2,
            "top1_share": 0.05,
            "eligible_country_nonzero_share": 0.95,
            "southern_hemisphere_share": 0.3,
            "nn_contraction": float("nan"),
            "sentinel_flagged": 0,
            "merchant_countries_median": 2.0,
            "merchants_above_1a_max_share": 0.0,
            "near_city_share": 0.8,
        },
        "region_share": {r: 0.2 for r in ("Africa", "Asia", "Europe", "North America", "South America", "Oceania")},
    }
    gates = load_bundle(BASELINE_POLICIES, "v").gates
    report = _grade({1: card}, gates, {1: []}, required_seeds=(1,))
    assert report.outcome == "RED"
    assert [f.gate for f in report.failures["B"]] == ["nn_contraction"]


def _card(**over: float) -> dict:
    m = {
        "country_gini": 0.55,
        "top10_share": 0.40,
        "top5_share": 0.25,
        "top1_share": 0.07,
        "eligible_country_nonzero_share": 0.95,
        "southern_hemisphere_share": 0.20,
        "nn_contraction": 0.40,
        "sentinel_flagged": 0,
        "merchant_countries_median": 2.0,
        "merchants_above_1a_max_share": 0.0,
        "near_city_share": 0.8,
    }
    m.update(over)
    return {
        "metrics": m,
        "region_share": {
            "Africa": 0.1,
            "Asia": 0.3,
            "Europe": 0.25,
            "North America": 0.15,
            "South America": 0.1,
            "Oceania": 0.1,
        },
    }


def test_grading_outcomes_and_failure_rows() -> None:
    gates = load_bundle(BASELINE_POLICIES, "v").gates
    ok: dict[int, list[str]] = {s: [] for s in gates.required_seeds}
    low = {s: {k: 0.0 for k in grading.CONCENTRATION} for s in gates.required_seeds}
    green = _grade({s: _card() for s in gates.required_seeds}, gates, ok, low)
    assert green.outcome == "GREEN_BPLUS" and not green.failures["B_PLUS"]
    # B+ needs the bootstrap bounds: without them the best claim is B.
    assert _grade({s: _card() for s in gates.required_seeds}, gates, ok).outcome == "GREEN_B"
    high = {s: dict(low[s], top1_share=0.09) for s in gates.required_seeds}
    assert _grade({s: _card() for s in gates.required_seeds}, gates, ok, high).outcome == "GREEN_B"
    cards = {s: _card() for s in gates.required_seeds}
    cards[7] = _card(country_gini=0.70)
    red = _grade(cards, gates, ok, low)
    assert red.outcome == "RED"
    rows = [(f.gate, f.seed, f.threshold, f.observed) for f in red.failures["B"]]
    assert rows == [("country_gini", 7, 0.68, 0.70)]
    assert red.next_action.startswith("Gini/top-k")
    # A missing required seed blocks any grade; a structural failure too.
    partial = _grade({42: _card()}, gates, {42: []}, {42: low[42]})
    assert partial.outcome == "RED" and partial.missing_seeds == [7, 101, 202]
    broken = _grade({s: _card() for s in gates.required_seeds}, gates, {**ok, 101: ["structural:unique_keys"]}, low)
    assert broken.outcome == "RED" and broken.next_action.startswith("structural")
    assert [(f.gate, f.seed) for f in broken.failures["B"]] == [("structural:unique_keys", 101)]
    # Perfect figures without a valid 1B flag: RED, and the hint says why.
    unsealed = _grade({s: _card() for s in gates.required_seeds}, gates, {**ok, 7: ["unsealed"]}, low)
    assert unsealed.outcome == "RED" and [f.gate for f in unsealed.failures["B"]] == ["unsealed"]
    assert unsealed.next_action.startswith("no valid 1B flag")
    # A seed with no structural verdict at all fails too (fail-closed).
    assert _grade({42: _card()}, gates, {}, {42: low[42]}, required_seeds=(42,)).outcome == "RED"


def test_a_grade_below_the_target_grade() -> None:
    assert [grading.below_target(o, "B_PLUS") for o in ("GREEN_BPLUS", "GREEN_B", "RED")] == [False, True, True]
    assert [grading.below_target(o, "B") for o in ("GREEN_BPLUS", "GREEN_B", "RED")] == [False, False, True]
    assert not any(grading.below_target(o, "none") for o in ("GREEN_BPLUS", "GREEN_B", "RED"))


def test_cross_seed_cv_is_population_std_over_mean() -> None:
    assert grading.population_cv([1.0, 3.0]) == pytest.approx(0.5)
    assert grading.population_cv([0.0, 0.0]) == 0.0
    assert grading.population_cv([-1.0, 1.0]) == float("inf")
    assert np.isnan(grading.population_cv([1.0, float("nan")]))
    gates = load_bundle(BASELINE_POLICIES, "v").gates
    cards = {
        42: _card(top1_share=0.02),
        7: _card(top1_share=0.07),
        101: _card(top1_share=0.07),
        202: _card(top1_share=0.07),
    }
    report = _grade(cards, gates, {s: [] for s in cards})
    assert report.cv["top1_share"] > 0.3
    assert set(report.cv) == set(grading.CV_METRICS)  # the seed plan's core metrics
    assert ("cv:top1_share", None) in [(f.gate, f.seed) for f in report.failures["B"]]


def test_bootstrap_upper_bound_equals_a_direct_computation() -> None:
    matrix = np.array([[10, 0, 0], [0, 10, 0], [0, 0, 10], [5, 5, 0]])
    upper = grading.bootstrap_upper(matrix, 500, 3)
    replicates = []
    for stream in range(4):  # 500 replicates: four streams of 125
        g = np.random.Generator(np.random.Philox(key=np.array([3, stream], dtype=np.uint64)))
        for _ in range(125):
            weights = np.bincount(g.integers(0, 4, 4), minlength=4)  # 4 merchants drawn with replacement
            replicates.append(metrics.country_gini(weights @ matrix))
    point = metrics.country_gini(matrix.sum(axis=0))
    q95, q50 = np.quantile(replicates, [0.95, 0.5])
    assert upper["country_gini"] == pytest.approx(point + (q95 - q50) + abs(q50 - point), rel=1e-12)


@settings(max_examples=examples(40))
@given(st.integers(2, 40), st.integers(2, 12), st.integers(0, 2**32 - 1))
def test_bootstrap_bound_is_never_below_the_estimate(merchants: int, countries: int, seed: int) -> None:
    """Resampling merchants drops rare countries (Gini biased down): a plain percentile bound
    fell below the estimate on every baseline seed. This one never does."""
    g = np.random.default_rng(seed)
    matrix = g.integers(0, 5, size=(merchants, countries)) * (g.random((merchants, countries)) < 0.3)
    matrix[:, 0] += 1  # every merchant has outlets
    upper = grading.bootstrap_upper(matrix, 100, seed)
    counts = matrix.sum(axis=0)
    assert upper["country_gini"] >= metrics.country_gini(counts) - 1e-12
    for name, f in (("top1_share", 0.01), ("top5_share", 0.05), ("top10_share", 0.10)):
        assert upper[name] >= metrics.top_share(counts, f)[0] - 1e-12


def _fake_run(root: Path, run_id: str, seed: int, digest: str = "d2", grid: int = 300, flag: str = "f" * 64) -> Path:
    run = root / "runs" / run_id
    run.mkdir(parents=True)
    out = {
        "site_locations": f"data/site_locations/seed={seed}/manifest_fingerprint={run_id}",
        "s0_gate_receipt": f"data/s0_gate_receipt/seed={seed}/manifest_fingerprint={run_id}",
    }
    (root / out["site_locations"]).mkdir(parents=True)
    (root / out["site_locations"] / "_manifest.json").write_text("{}")
    (root / out["s0_gate_receipt"]).mkdir(parents=True)
    (root / out["s0_gate_receipt"] / "gate_receipt.json").write_text(json.dumps({"upstream_flag_sha256": flag}))
    digests = {"s2_tile_weights": digest, "s4_alloc_plan": "d4", "s6_jitter": "d6"}
    (run / "run.json").write_text(
        json.dumps(
            {
                "run_id": run_id,
                "seed": seed,
                "parameter_hash": run_id,
                "manifest_fingerprint": run_id,
                "policy_digests": digests,
                "policies": {"grid": {"resolution_arcsec": grid}},
                "outputs": out,
            }
        )
    )
    return run


def test_baseline_authority_refuses_modification(tmp_path: Path) -> None:
    a = _fake_run(tmp_path, "a", 42)
    b = _fake_run(tmp_path, "b", 42)
    discipline.pin_baseline(tmp_path, a, 11.0)
    assert discipline.pin_baseline(tmp_path, a, 11.0)["run_id"] == "a"  # same run: no-op
    with pytest.raises(Seg1BError) as err:
        discipline.pin_baseline(tmp_path, b, 9.0)
    assert err.value.code == "E_BASELINE_PINNED"


def test_pins_are_keyed_by_seed_grid_and_1a_bundle(tmp_path: Path) -> None:
    """One seed, three authorities: its 5′ stand-in's, a 30″ grid's and another 1A bundle's,
    each at its own path, each refusing another run, all kept by prune."""
    runs = {
        "five": _fake_run(tmp_path, "five", 42),
        "thirty": _fake_run(tmp_path, "thirty", 42, grid=30),
        "other1a": _fake_run(tmp_path, "other1a", 42, flag="a" * 64),
        "rival": _fake_run(tmp_path, "rival", 42, grid=30),
    }
    for name in ("five", "thirty", "other1a"):
        discipline.pin_baseline(tmp_path, runs[name], 10.0)
    pins = {
        p.relative_to(tmp_path).as_posix(): json.loads(p.read_text())["run_id"] for p in RunRoot(tmp_path).pin_files()
    }
    assert pins == {
        "baseline_authority/seed=42/grid=30/upstream=ffffffffffffffff.json": "thirty",
        "baseline_authority/seed=42/grid=300/upstream=aaaaaaaaaaaaaaaa.json": "other1a",
        "baseline_authority/seed=42/grid=300/upstream=ffffffffffffffff.json": "five",
    }
    assert discipline.baseline_pointer(tmp_path, discipline.PinKey(42, 30, "f" * 64))["grid_arcsec"] == 30
    with pytest.raises(Seg1BError) as err:
        discipline.pin_baseline(tmp_path, runs["rival"], 9.0)  # the 30″ pin is taken
    assert err.value.code == "E_BASELINE_PINNED" and "30″ grid" in err.value.message
    kept = discipline.prune(tmp_path)["kept_runs"]
    assert sorted(kept) == ["five", "other1a", "thirty"] and not runs["rival"].exists()
    assert kept["thirty"] == ["baseline_authority/seed=42/grid=30/upstream=ffffffffffffffff.json"]


def test_prune_keeps_everything_referenced(tmp_path: Path) -> None:
    for run_id in ("base", "cand", "good", "locked", "packed", "old1", "old2"):
        _fake_run(tmp_path, run_id, 42)
    discipline.pin_baseline(tmp_path, tmp_path / "runs" / "base", 10.0)
    discipline.set_pointer(tmp_path, "current_candidate", {"run_id": "cand"})
    discipline.set_pointer(tmp_path, "last_good", {"run_ids": ["good"]})
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "P1.json").write_text(json.dumps({"phase": "P1", "run_id": "locked"}))
    (tmp_path / "certification" / "p").mkdir(parents=True)
    (tmp_path / "certification" / "p" / "pack.json").write_text(json.dumps({"run_ids": ["packed"]}))
    dry = discipline.prune(tmp_path, dry_run=True)
    assert dry["removed_runs"] == ["old1", "old2"] and (tmp_path / "runs" / "old1").exists()
    out = discipline.prune(tmp_path)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["base", "cand", "good", "locked", "packed"]
    assert out["removed_datasets"] == [
        "data/site_locations/seed=42/manifest_fingerprint=old1",
        "data/site_locations/seed=42/manifest_fingerprint=old2",
    ]
    assert (tmp_path / "data/site_locations/seed=42/manifest_fingerprint=base").exists()


def test_phase_lock_refuses_changed_policy_until_reopened(tmp_path: Path) -> None:
    (tmp_path / "locks").mkdir()
    record = {"phase": "P1", "state": "locked", "policy": "s2_tile_weights", "policy_digest": "accepted", "run_id": "r"}
    (tmp_path / "locks" / "P1.json").write_text(json.dumps(record))
    same = {"s2_tile_weights": "accepted", "s4_alloc_plan": "x", "s6_jitter": "y"}
    assert [lock["phase"] for lock in closure.check_locks(tmp_path, same)] == ["P1"]
    changed = dict(same, s2_tile_weights="new")
    with pytest.raises(Seg1BError) as err:
        closure.check_locks(tmp_path, changed)
    assert err.value.code == "E_PHASE_LOCKED" and err.value.key == "s2_tile_weights"
    (tmp_path / "locks" / "P1.json").write_text(json.dumps(record | {"state": "reopened"}))
    assert closure.check_locks(tmp_path, changed) == []  # a reopened phase no longer binds


def test_run_folder_outside_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    outside = _fake_run(tmp_path / "elsewhere", "x", 1)
    with pytest.raises(Seg1BError) as err:
        discipline.run_dir(tmp_path / "root", str(outside))
    assert err.value.code == "E_PATH_ESCAPE"
    with pytest.raises(Seg1BError) as err:
        discipline.run_dir(tmp_path / "root", "../../elsewhere/runs/x")  # resolved under root/runs
    assert err.value.code == "E_PATH_ESCAPE"
    shutil.rmtree(tmp_path / "elsewhere")


@settings(max_examples=examples(200), deadline=None)
@given(
    values=st.lists(
        st.one_of(st.just(0.0), st.just(0.5), st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False)),
        min_size=1,
        max_size=300,
    ),
    parts=st.integers(1, 6),
)
def test_quantiles_over_parts_equal_numpy_bit_for_bit(values: list[float], parts: int) -> None:
    """The selection over parts (counts per fine bin, then only the distinct values of the
    needed bins) gives np.quantile's numbers exactly, repeats and zeros included."""
    v = np.asarray(values)
    pieces = [np.sort(p) for p in np.array_split(v, parts)]
    plan = quantiles.plan(len(v), metrics.NN_QUANTILES)
    where = quantiles.locate(sum(quantiles.bin_counts(p) for p in pieces), plan.ranks)
    bins = sorted({b for b, _ in where.values()})
    distinct = [quantiles.distinct_in_bins(p, bins) for p in pieces]
    value_at = {r: quantiles.kth([d[b] for d in distinct], k) for r, (b, k) in where.items()}
    assert np.array_equal(quantiles.interpolate(plan, value_at), np.quantile(v, metrics.NN_QUANTILES))


@pytest.mark.parametrize("kind", ["random", "clustered", "polar"])
def test_the_band_summary_equals_every_distance_in_memory(kind: str, tmp_path: Path) -> None:
    """What S9 keeps (quantiles and histogram, no per-site array in the driver) is what the
    whole sorted array gives."""
    lon, lat = _clouds(kind)
    histogram, _ = np.histogram(lat, bins=LAT_BINS)
    summary, _ = nearest_neighbour_summary(ArrayBands(lon, lat), len(lon), histogram, tmp_path, sites_per_band=300)
    whole = metrics.NNSummary.of(nearest_neighbour_km_chunked(lon, lat, sites_per_band=300))
    assert summary.quantiles is not None and whole.quantiles is not None
    assert np.array_equal(summary.quantiles, whole.quantiles) and np.array_equal(summary.counts, whole.counts)
    assert len(list(tmp_path.glob("nn-band-*.npy"))) == 5  # one sorted file per band, on the workers' side


@settings(max_examples=examples(25), deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6))
def test_bands_from_latitude_sorted_files_equal_bands_from_memory(seed: int, files: int) -> None:
    """S9's reader (per-batch files sorted by latitude, two binary searches each) gives every
    band exactly the sites the in-memory reader does, sites on band edges included."""
    g = np.random.default_rng(seed)
    n = int(g.integers(2, 400))
    lon, lat = g.uniform(-180, 180, n), np.round(g.uniform(-90, 90, n), 0)  # many sites on the edges
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i, part in enumerate(np.array_split(np.arange(n), files)):
            paths.append(Path(folder) / f"by-latitude-{i}.npy")
            write_sorted_by_latitude(paths[-1], lon[part], lat[part])
        edges = [-90.0, *sorted(set(np.round(g.uniform(-89, 89, 3), 0).tolist())), 90.0]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            last = hi == 90.0
            sorted_read, memory_read = SortedBands(paths)(lo, hi, last), ArrayBands(lon, lat)(lo, hi, last)
            assert sorted(zip(*sorted_read, strict=True)) == sorted(zip(*memory_read, strict=True))
            got, want = band_arcs(SortedBands(paths), lo, hi, last), band_arcs(ArrayBands(lon, lat), lo, hi, last)
            assert np.array_equal(np.sort(got), np.sort(want))


def test_an_undefined_distance_is_counted_apart() -> None:
    """NaN is counted in its own bin (the summary then reports undefined quantiles, as
    np.quantile does), never in the last distance bin."""
    counts = quantiles.bin_counts(np.array([np.nan, 1.0, 2e5]))
    assert counts[quantiles.NAN_BIN] == 1 and counts[quantiles.NAN_BIN - 1] == 1 and counts.sum() == 3


@pytest.mark.parametrize(
    ("rural_km", "rural_min_population"), [(20.0, 20_000), (30.0, 100_000), (10.0, 20_000), (20.0, 500_000)]
)
def test_rural_sites_are_those_near_no_town_whether_or_not_cities_are_towns(
    rural_km: float, rural_min_population: int
) -> None:
    """Nested radii and populations skip the town search for sites near a city; the count is
    the same as searching every site (and the other policies search every site)."""
    gates = load_bundle(BASELINE_POLICIES, "v").gates
    towns = gates.plausibility.model_copy(update={"rural_km": rural_km, "rural_min_population": rural_min_population})
    gates = gates.model_copy(update={"plausibility": towns})
    g = np.random.default_rng(5)
    places = refdata.places().at_least(20_000)
    pick = g.integers(0, len(places.lon), 3000)
    lon = np.concatenate([places.lon[pick] + g.normal(0, 0.3, 3000), g.uniform(-180, 180, 1000)])
    lat = np.concatenate([np.clip(places.lat[pick] + g.normal(0, 0.3, 3000), -90, 90), g.uniform(-60, 70, 1000)])
    vectors = metrics.unit_vectors(((lon + 180) % 360) - 180, lat)
    near_city, rural = scoring.near_city_and_rural(vectors, gates)
    assert near_city == scoring.near_places(vectors, gates.near_city_km, gates.near_city_min_population).sum()
    assert rural == (~scoring.near_places(vectors, rural_km, rural_min_population)).sum()
    assert 0 < near_city < len(lon) and 0 < rural < len(lon)


@settings(max_examples=examples(60))
@given(seed=st.integers(0, 2**32 - 1), arc_deg=st.sampled_from([0.001, 0.03, 0.7, 5.0, 40.0, 120.0]))
def test_the_halo_cells_keep_every_site_within_the_arc_of_a_centre(seed: int, arc_deg: float) -> None:
    """Around the poles and across the antimeridian too: the cell test is a superset."""
    g = np.random.default_rng(seed)
    lon = np.concatenate([g.uniform(-180, 180, 40), [179.999, -180.0, 180.0, 0.0]])
    lat = np.concatenate([np.clip(g.normal(0, 60, 40), -90, 90), [0.0, 89.99, -89.999, 90.0]])
    centre = g.integers(0, len(lon), 2000)
    # points scattered around the centres at up to twice the arc, some across ±180°
    bearing, step = g.uniform(0, 2 * np.pi, 2000), np.radians(arc_deg) * g.uniform(0, 2, 2000)
    phi, lam = np.radians(lat[centre]), np.radians(lon[centre])
    lat2 = np.arcsin(np.sin(phi) * np.cos(step) + np.cos(phi) * np.sin(step) * np.cos(bearing))
    lon2 = lam + np.arctan2(np.sin(bearing) * np.sin(step) * np.cos(phi), np.cos(step) - np.sin(phi) * np.sin(lat2))
    lon2, lat2 = (np.degrees(lon2) + 180.0) % 360.0 - 180.0, np.degrees(lat2)
    chord = np.linalg.norm(metrics.unit_vectors(lon2, lat2) - metrics.unit_vectors(lon[centre], lat[centre]), axis=1)
    within = np.degrees(2 * np.arcsin(np.clip(chord / 2, 0, 1))) <= arc_deg
    kept = nearest._cells_near(lon, lat, arc_deg)(lon2, lat2)
    assert kept[within].all() and within.any()
