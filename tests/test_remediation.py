"""The remediation's pure cores: governed country mass, re-mass, tile sampling, no lone
sites, the mixture jitter."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from seg1b_dask.chain.runner import DEFAULT_POLICIES
from seg1b_dask.core import rng
from seg1b_dask.core.grid import Grid
from seg1b_dask.errors import Seg1BError
from seg1b_dask.model.mass import govern, whole_counts
from seg1b_dask.policies.bundle import load_bundle
from seg1b_dask.policies.states import CountryAllocationRemass, S2BlendV2
from seg1b_dask.states.s4_alloc_plan import contract, remass, tiles
from seg1b_dask.states.s6_jitter import place_sites
from seg1b_dask.states.triage import triage_hints

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


@given(
    st.integers(0, 2**32 - 1),
    st.floats(0.004, 0.05),
    st.floats(0.0, 300.0),
    st.floats(0.0, 1.0),
    st.floats(0.1, 0.3),
)
@settings(max_examples=examples(40))
def test_governed_vector_meets_every_floor_and_cap(
    seed: int, hard_cap: float, per_capita: float, exponent: float, south_floor: float
) -> None:
    """For random bundles the governed vector holds every limit it was given — the hard cap,
    the per-capita cap, the top-k caps, the region and southern floors — or the bundle is
    refused as contradictory; it never returns a vector that breaks one."""
    population, south, eligible = _countries(seed)
    eligible[:5] = False
    policy = MASS.model_copy(
        update={
            "country_cap_share_hard": hard_cap,
            "max_population_share_multiple": per_capita,
            "population_exponent": exponent,
            "southern_floor_share": south_floor,
        }
    )
    try:
        share = govern(population**exponent, REGIONS, south, eligible, population, policy).share
    except Seg1BError as err:
        assert err.code == "E_MASS_INFEASIBLE"
        return
    tol = 1e-9
    assert share.sum() == pytest.approx(1.0) and (share[~eligible] == 0).all()
    for region, floor in policy.region_floor_share.items():
        assert share[region == REGIONS].sum() >= floor - tol
    assert (share * south).sum() >= policy.southern_floor_share - tol
    assert share.max() <= policy.country_cap_share_hard + tol
    if per_capita > 0:
        pop_share = np.where(eligible, population, 0) / population[eligible].sum()
        assert (share <= per_capita * pop_share + tol).all()
    top = np.sort(share)[::-1]
    n = int(eligible.sum())
    for name, f in (("top1", 0.01), ("top5", 0.05), ("top10", 0.10)):
        assert top[: int(np.ceil(f * n))].sum() <= getattr(policy.topk_cap_share, name) + tol


def test_contradictory_caps_are_a_coded_refusal() -> None:
    population, south, eligible = _countries(1)
    tight = MASS.model_copy(update={"country_cap_share_hard": 0.001})
    with pytest.raises(Seg1BError) as err:
        govern(population, REGIONS, south, eligible, population, tight)
    assert err.value.code == "E_MASS_INFEASIBLE" and "country_cap_share_hard" in str(err.value)
    floors = MASS.model_copy(update={"southern_floor_share": 0.6, "country_cap_share_hard": 0.005})
    with pytest.raises(Seg1BError) as err:  # south can hold only so much under these caps
        govern(population, REGIONS, south, eligible, population, floors)
    assert err.value.code == "E_MASS_INFEASIBLE"


@given(st.integers(50, 5000), st.integers(0, 5), st.integers(0, 2**32 - 1))
@settings(max_examples=examples(50))
def test_whole_counts_are_exact_and_keep_their_floors(total: int, minimum: int, seed: int) -> None:
    g = np.random.default_rng(seed)
    lower = np.minimum(g.integers(0, 3, 30), minimum)
    share = np.maximum(g.dirichlet(np.ones(30)), lower / total)
    share /= share.sum()
    counts = whole_counts(share, total, lower)
    assert counts.sum() == total and (counts >= lower).all()
    assert (np.abs(counts - share * total) < 1 + lower.max()).all()


@given(st.lists(st.integers(0, 60), min_size=1, max_size=40), st.integers(0, 2000), st.integers(0, 2**32 - 1))
@settings(max_examples=examples(100))
def test_water_filling_keeps_small_counts_whole_and_cuts_the_largest(raw: list[int], budget: int, seed: int) -> None:
    counts = np.asarray(raw, dtype=np.int64)
    tie = np.random.default_rng(seed).integers(0, 2**63, len(counts)).astype(np.uint64)
    keep = remass.water_fill(budget, counts, tie)
    assert keep.sum() == min(budget, counts.sum()) and (keep <= counts).all() and (keep >= 0).all()
    cut = keep < counts
    if cut.any():  # everyone cut sits at one level (±1), and everyone kept whole is at most that level + 1
        assert keep[cut].max() - keep[cut].min() <= 1
        assert (counts[~cut] <= keep[cut].min() + 1).all()


def _pairs(seed: int, n_merchants: int = 300, n_countries: int = 40) -> contract.Pairs:
    g = np.random.default_rng(seed)
    rows = []
    for m in range(n_merchants):
        home = int(g.integers(0, 8))  # 1A crowds everything into 8 countries
        countries = sorted({home, *g.integers(0, 8, size=int(g.integers(0, 3))).tolist()})
        for c in countries:
            rows.append((m + 1, c, int(g.integers(2, 40)), home))
    a = np.asarray(rows)
    return contract.Pairs(
        a[:, 0].astype(np.uint64), a[:, 1].astype(np.int64), a[:, 2].astype(np.int64), a[:, 3].astype(np.int64)
    )


@pytest.mark.parametrize("seed", [5, 6])
def test_remass_hits_targets_keeps_totals_and_moves_the_minimum(seed: int) -> None:
    pairs = _pairs(seed)
    n_countries = 40
    total = int(pairs.n_sites.sum())
    targets = whole_counts(np.full(n_countries, 1 / n_countries), total, np.full(n_countries, 3))
    targets = np.maximum(targets, remass.home_floor(pairs, n_countries, REMASS.home_sites_min))
    targets[np.argmax(targets)] -= int(targets.sum()) - total
    g = np.random.default_rng(seed)
    lon, lat = g.uniform(-180, 180, n_countries), g.uniform(-60, 70, n_countries)
    policy = REMASS
    args = (pairs, targets, remass.country_distance_km(lon, lat), policy, seed)
    out = remass.remass(*args)
    assert np.array_equal(np.bincount(out.country, weights=out.n_sites, minlength=n_countries).astype(int), targets)
    before = np.bincount(np.searchsorted(np.unique(pairs.merchant), pairs.merchant), weights=pairs.n_sites)
    after = np.bincount(np.searchsorted(np.unique(out.merchant), out.merchant), weights=out.n_sites)
    assert np.array_equal(before, after)
    a_count = np.bincount(pairs.country, weights=pairs.n_sites, minlength=n_countries)
    minimum = np.abs(targets - a_count).sum() / 2 / total
    assert out.stats["relocated_share"] == pytest.approx(minimum, abs=1e-6)
    # Every merchant keeps its home: at least home_sites_min outlets there (fewer only if 1A had fewer).
    home_1a = {int(m): int(n) for m, c, n, h in zip(*map(np.asarray, vars(pairs).values()), strict=True) if c == h}
    home_of = dict(zip(pairs.merchant.tolist(), pairs.home.tolist(), strict=False))
    home_1b = {
        int(m): int(n) for m, c, n in zip(out.merchant, out.country, out.n_sites, strict=True) if c == home_of[m]
    }
    assert all(home_1b.get(m, 0) >= min(n, policy.home_sites_min) for m, n in home_1a.items())
    assert out.stats["merchants_lost_home"] == 0
    if out.stats["merchants_over_new_country_limit"] == 0:  # the limit of new countries binds
        assert out.stats["new_countries_max"] <= policy.max_new_countries
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


def test_moved_outlets_go_to_the_merchants_own_countries_first() -> None:
    """Country 0 is over target; merchant 1 already has outlets in country 2 (under target),
    merchant 2 has none there. Country 1 is nearer to both homes, yet merchant 1's outlets
    fill country 2 first: its own country beats a nearer new one."""
    pairs = contract.Pairs(
        np.asarray([1, 1, 2], dtype=np.uint64),
        np.asarray([0, 2, 0], dtype=np.int64),
        np.asarray([20, 2, 20], dtype=np.int64),
        np.asarray([0, 0, 0], dtype=np.int64),
    )
    targets = np.asarray([20, 10, 12], dtype=np.int64)
    distance = np.asarray([[0.0, 100.0, 5000.0], [100.0, 0.0, 5000.0], [5000.0, 5000.0, 0.0]])
    policy = REMASS.model_copy(update={"max_merchant_share": 1.0})
    out = remass.remass(pairs, targets, distance, policy, 1)
    cells = {(int(m), int(c)): int(n) for m, c, n in zip(out.merchant, out.country, out.n_sites, strict=True)}
    assert cells[(1, 2)] == 12 and cells.get((2, 2), 0) == 0  # merchant 1's own country took all its need
    assert cells[(2, 1)] == 10 and out.stats["merchants_lost_home"] == 0


@given(st.integers(1, 300), st.lists(st.integers(1, 10**9), min_size=1, max_size=200), st.floats(0, 0.999999))
@settings(max_examples=examples(100))
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
    expected = np.where(tile == tile[0], 300.0, 100.0)
    lon, lat, attempts = place_sites(tile, fields, country, grid, rng.stream_key(3, "S6"), policy, expected, 10_000)
    west, south, east, north = grid.tile_bounds(tile)
    assert ((lon >= west) & (lon <= east) & (lat >= south) & (lat <= north)).all()
    assert shapely.contains_xy(country, lon, lat).all()
    assert len(set(zip(lon.tolist(), lat.tolist(), strict=True))) == 400
    assert attempts.mean() < 1.5  # drawn inside the tile by construction: only the border redraws


def test_caps_too_tight_for_the_merchants_at_hand_widen_and_say_so() -> None:
    """Two merchants keep one outlet each at home; their 4 mobile outlets each must fill a
    need of 8, which no merchant may fill more than 1 % of: the caps are a guard where other
    merchants can take over, so they double until the need is met, and the run says how often."""
    pairs = contract.Pairs(
        np.asarray([1, 2], dtype=np.uint64),
        np.asarray([0, 0], dtype=np.int64),
        np.asarray([5, 5], dtype=np.int64),
        np.asarray([0, 0], dtype=np.int64),
    )
    targets = np.asarray([2, 8], dtype=np.int64)
    policy = REMASS.model_copy(update={"max_merchant_share": 0.01})
    out = remass.remass(pairs, targets, np.zeros((2, 2)), policy, 1)
    assert np.array_equal(np.bincount(out.country, weights=out.n_sites, minlength=2), targets)
    assert out.stats["cell_cap_doublings"] == 2  # ⌈0.01 · 8⌉ = 1 → 2 → 4 per merchant


def test_triage_names_the_settings_of_the_bundle_that_failed() -> None:
    from seg1b_dask.chain.runner import BASELINE_POLICIES

    legacy = triage_hints(load_bundle(BASELINE_POLICIES, "v"))
    governed = triage_hints(BUNDLE)
    assert "country_allocation.mode legacy" in legacy["concentration"]
    assert "top_share_max" in governed["concentration"] and "legacy" not in governed["concentration"]
    assert "uniform_v1" in legacy["nn"] and "core_density_per_km2_per_million" in governed["nn"]
    assert "tie_break tile_id" in legacy["collapse"]
