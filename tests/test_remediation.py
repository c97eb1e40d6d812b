"""The remediation's pure cores: governed country mass, re-mass, tile sampling, no lone
sites, the mixture jitter."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from seg1b_dask import rng
from seg1b_dask.errors import Seg1BError
from seg1b_dask.grid import Grid
from seg1b_dask.mass import govern, integer_targets
from seg1b_dask.policies import CountryAllocationRemass, S2BlendV2, load_bundle
from seg1b_dask.runner import DEFAULT_POLICIES
from seg1b_dask.states.s4_alloc_plan import remass, tiles
from seg1b_dask.states.s6_jitter import place_sites

BUNDLE = load_bundle(DEFAULT_POLICIES, "v")


def _modes() -> tuple[S2BlendV2, CountryAllocationRemass]:
    s2, s4 = BUNDLE.s2_tile_weights.tile_weights, BUNDLE.s4_alloc_plan.country_allocation
    assert isinstance(s2, S2BlendV2) and isinstance(s4, CountryAllocationRemass)
    return s2, s4


S2, REMASS = _modes()
MASS = S2.country_mass
REGIONS = np.asarray(["Africa", "Asia", "Europe", "North America", "South America", "Oceania"] * 40, dtype="U16")


def _countries(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    population = np.exp(g.normal(15, 2, len(REGIONS)))
    south = np.where(np.isin(REGIONS, ["South America", "Oceania"]), 1.0, g.uniform(0, 0.3, len(REGIONS)))
    return population, south, np.ones(len(REGIONS), dtype=bool)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_governed_vector_meets_every_floor_and_cap(seed: int) -> None:
    population, south, eligible = _countries(seed)
    eligible[:5] = False
    vector = govern(population**MASS.population_exponent, REGIONS, south, eligible, population, MASS)
    share = vector.share
    assert share.sum() == pytest.approx(1.0) and (share[~eligible] == 0).all()
    for region, floor in MASS.region_floor_share.items():
        assert share[region == REGIONS].sum() >= floor - 1e-9
    assert (share * south).sum() >= MASS.southern_floor_share - 1e-9
    assert share.max() <= MASS.country_cap_share_hard + 1e-9
    top = np.sort(share)[::-1]
    assert top[:3].sum() <= MASS.topk_cap_share.top1 + 1e-9


def test_contradictory_caps_are_a_coded_refusal() -> None:
    population, south, eligible = _countries(1)
    tight = MASS.model_copy(update={"country_cap_share_hard": 0.001})
    with pytest.raises(Seg1BError) as err:
        govern(population, REGIONS, south, eligible, population, tight)
    assert err.value.code == "E_MASS_INFEASIBLE" and "country_cap_share_hard" in str(err.value)


@given(st.integers(50, 5000), st.integers(0, 5), st.integers(0, 2**32 - 1))
@settings(max_examples=50, deadline=None)
def test_integer_targets_are_exact(total: int, minimum: int, seed: int) -> None:
    g = np.random.default_rng(seed)
    share = g.dirichlet(np.ones(30))
    eligible = np.ones(30, dtype=bool)
    targets = integer_targets(share, total, minimum, eligible)
    assert targets.sum() == total
    if minimum * 30 <= total:
        assert targets.min() >= minimum


def _pairs(seed: int, n_merchants: int = 300, n_countries: int = 40) -> remass.Pairs:
    g = np.random.default_rng(seed)
    rows = []
    for m in range(n_merchants):
        home = int(g.integers(0, 8))  # 1A crowds everything into 8 countries
        countries = sorted({home, *g.integers(0, 8, size=int(g.integers(0, 3))).tolist()})
        for c in countries:
            rows.append((m + 1, c, int(g.integers(2, 40)), home))
    a = np.asarray(rows)
    return remass.Pairs(
        a[:, 0].astype(np.uint64), a[:, 1].astype(np.int64), a[:, 2].astype(np.int64), a[:, 3].astype(np.int64)
    )


@pytest.mark.parametrize("seed", [5, 6])
def test_remass_hits_targets_keeps_totals_and_moves_the_minimum(seed: int) -> None:
    pairs = _pairs(seed)
    n_countries = 40
    total = int(pairs.n_sites.sum())
    targets = integer_targets(np.full(n_countries, 1 / n_countries), total, 3, np.ones(n_countries, dtype=bool))
    g = np.random.default_rng(seed)
    lon, lat = g.uniform(-180, 180, n_countries), g.uniform(-60, 70, n_countries)
    policy = REMASS
    names = np.asarray([f"C{i}" for i in range(n_countries)])
    args = (pairs, targets, remass.country_distance_km(lon, lat), policy, seed, names)
    out = remass.remass(*args)
    assert np.array_equal(np.bincount(out.country, weights=out.n_sites, minlength=n_countries).astype(int), targets)
    before = np.bincount(np.searchsorted(np.unique(pairs.merchant), pairs.merchant), weights=pairs.n_sites)
    after = np.bincount(np.searchsorted(np.unique(out.merchant), out.merchant), weights=out.n_sites)
    assert np.array_equal(before, after)
    a_count = np.bincount(pairs.country, weights=pairs.n_sites, minlength=n_countries)
    minimum = np.abs(targets - a_count).sum() / 2 / total
    assert out.stats["relocated_share"] == pytest.approx(minimum, abs=1e-6)
    assert out.stats["uniform_alternative_relocated_share"] > out.stats["relocated_share"]
    # Every moved stub leaves a slot above what its 1A pair kept and lands on a new, distinct
    # 1B key above what that merchant kept in the destination (runs expand to one row per stub).
    merchant, src_c, src_o, dst_c, dst_o = out.moves.expand()
    moved = int((pairs.n_sites - out.kept).sum())
    assert len(set(zip(merchant.tolist(), dst_c.tolist(), dst_o.tolist(), strict=True))) == len(merchant) == moved
    assert len(set(zip(merchant.tolist(), src_c.tolist(), src_o.tolist(), strict=True))) == moved
    assert len(out.moves.length) < moved  # runs, not one row per stub
    kept_of = {(int(m), int(c)): int(k) for m, c, k in zip(pairs.merchant, pairs.country, out.kept, strict=True)}
    n_of = {(int(m), int(c)): int(n) for m, c, n in zip(pairs.merchant, pairs.country, pairs.n_sites, strict=True)}
    assert all(
        kept_of[(int(m), int(c))] < o <= n_of[(int(m), int(c))] for m, c, o in zip(merchant, src_c, src_o, strict=True)
    )
    assert all(o > kept_of.get((int(m), int(c)), 0) for m, c, o in zip(merchant, dst_c, dst_o, strict=True))
    again = remass.remass(*args)
    assert np.array_equal(again.n_sites, out.n_sites) and np.array_equal(again.country, out.country)


@given(st.integers(1, 300), st.lists(st.integers(1, 10**9), min_size=1, max_size=200), st.floats(0, 0.999999))
@settings(max_examples=100, deadline=None)
def test_systematic_sampling_is_within_one_of_every_quota(n: int, raw: list[int], offset: float) -> None:
    weight = np.asarray(raw, dtype=np.uint64)
    counts = tiles.systematic(n, weight, offset, lambda idx: idx.astype(np.uint64), 1.0)
    assert counts.sum() == n
    quota = n * weight.astype(float) / float(weight.sum())
    assert (counts >= np.floor(quota) - 1e-9).all() and (counts <= np.ceil(quota) + 1e-9).all()


def test_no_lone_tiles_moves_singletons_to_the_nearest_full_tile() -> None:
    grid = Grid(300)
    tile = np.asarray([100_000, 100_001, 100_001, 500_000, 100_002], dtype=np.int64)
    n_sites = np.asarray([1, 2, 1, 1, 5], dtype=np.int64)
    country_tiles = np.asarray([100_000, 100_001, 100_002, 500_000], dtype=np.int64)
    country_weight = np.asarray([5, 1, 1, 9], dtype=np.uint64)
    moved_tile, moved = tiles.no_lone_tiles(tile, n_sites, 2, grid, country_tiles, country_weight)
    load = np.bincount(np.unique(moved_tile, return_inverse=True)[1], weights=n_sites)
    assert load.min() >= 2 and moved == 2
    assert moved_tile[0] in (100_001, 100_002) and moved_tile[3] in (100_001, 100_002)
    # No tile holds two sites: all gather on the heaviest tile (most sites, then weight).
    alone, moved = tiles.no_lone_tiles(
        np.asarray([100_000, 100_001, 500_000]), np.ones(3, dtype=np.int64), 2, grid, country_tiles, country_weight
    )
    assert moved == 3 and (alone == 500_000).all()


def test_mixture_sites_stay_in_tile_and_country_and_are_distinct() -> None:
    grid = Grid(300)
    country = shapely.Polygon([(10.0, 45.0), (10.4, 45.0), (10.4, 45.3), (10.0, 45.2)])
    shapely.prepare(country)
    row, col = int((90 - 45.1) / grid.deg), int((10.1 + 180) / grid.deg)
    tile = np.full(400, row * grid.ncols + col, dtype=np.int64)
    tile[300:] += 1
    fields = (np.arange(400, dtype=np.uint64), np.zeros(400, dtype=np.uint64), np.arange(400, dtype=np.uint64))
    policy = BUNDLE.s6_jitter.jitter
    lon, lat, _ = place_sites(tile, fields, country, grid, rng.stream_key(3, "S6"), policy)
    west, south, east, north = grid.tile_bounds(tile)
    assert ((lon >= west) & (lon <= east) & (lat >= south) & (lat <= north)).all()
    assert shapely.contains_xy(country, lon, lat).all()
    assert len(set(zip(lon.tolist(), lat.tolist(), strict=True))) == 400


def test_targets_the_mobile_outlets_cannot_meet_are_a_coded_refusal() -> None:
    """Two merchants with 5 mobile outlets each cannot fill a need of 10 when no merchant may
    fill more than 1 % of a country's need and both must fit in 10 countries (1 per cell)."""
    pairs = remass.Pairs(
        np.asarray([1, 2], dtype=np.uint64),
        np.asarray([0, 0], dtype=np.int64),
        np.asarray([5, 5], dtype=np.int64),
        np.asarray([0, 0], dtype=np.int64),
    )
    targets = np.asarray([0, 10], dtype=np.int64)
    policy = REMASS.model_copy(update={"max_share_of_need": 0.01})
    with pytest.raises(Seg1BError) as err:
        remass.remass(pairs, targets, np.zeros((2, 2)), policy, 1, np.asarray(["AA", "BB"]))
    assert err.value.code == "E_REMASS_INFEASIBLE" and "BB" in str(err.value)


def test_triage_names_the_settings_of_the_bundle_that_failed() -> None:
    from seg1b_dask import grading
    from seg1b_dask.runner import BASELINE_POLICIES

    legacy = grading.triage_hints(load_bundle(BASELINE_POLICIES, "v"))
    governed = grading.triage_hints(BUNDLE)
    assert "country_allocation.mode legacy" in legacy["concentration"]
    assert "country_cap_share_hard" in governed["concentration"] and "legacy" not in governed["concentration"]
    assert "uniform_v1" in legacy["nn"] and "core_sigma_km_per_sqrt_site" in governed["nn"]
    assert "tie_break tile_id" in legacy["collapse"]
