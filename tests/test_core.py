"""Pure cores on small synthetic inputs."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from seg1b_dask.core import metrics, rng
from seg1b_dask.core.grid import Grid
from seg1b_dask.io.refdata import EdgeTable
from seg1b_dask.policies.states import S6UniformV1
from seg1b_dask.states.s1_tiles import rasterize_band, touched_cells
from seg1b_dask.states.s4_alloc_plan import tiles as tile_allocation
from seg1b_dask.states.s4_alloc_plan.tiles import largest_remainder as allocate_tiles
from seg1b_dask.states.s5_assignment import assign_sites
from seg1b_dask.states.s6_jitter import place_sites


def _edges(*geoms: shapely.Geometry) -> EdgeTable:
    parts = []
    for cid, geom in enumerate(geoms, start=1):
        for ring in shapely.get_rings(shapely.get_parts(geom)):
            xy = shapely.get_coordinates(ring)
            parts.append((xy[:-1], xy[1:], np.full(len(xy) - 1, cid, np.int16)))
    a = np.concatenate([p[0] for p in parts])
    b = np.concatenate([p[1] for p in parts])
    keep = a[:, 1] != b[:, 1]
    return EdgeTable(a[keep, 0], a[keep, 1], b[keep, 0], b[keep, 1], np.concatenate([p[2] for p in parts])[keep])


def test_rasterize_matches_shapely_centres() -> None:
    grid = Grid(3600)
    donut = shapely.Polygon(
        [(-40, -30), (40, -30), (40, 30), (-40, 30)], [[(-10, -10), (10, -10), (10, 10), (-10, 10)]]
    )
    tri = shapely.Polygon([(100.3, 0.2), (170.1, 5.3), (120.7, 60.2)])  # no centre on an edge
    band = rasterize_band(_edges(donut, tri), grid, 0, grid.nrows)
    rows, cols = np.meshgrid(np.arange(grid.nrows), np.arange(grid.ncols), indexing="ij")
    x, y = -180 + (cols + 0.5) * grid.deg, 90 - (rows + 0.5) * grid.deg
    truth = np.where(shapely.contains_xy(donut, x, y), 1, np.where(shapely.contains_xy(tri, x, y), 2, 0))
    assert band.shape == (180, 360) and band.dtype == np.int16
    np.testing.assert_array_equal(band, truth)
    # Bands are independent: rows 50..90 alone equal the same rows of the whole grid.
    np.testing.assert_array_equal(rasterize_band(_edges(donut, tri), grid, 50, 90), band[50:90])


def test_touched_cells_for_tiny_polygon() -> None:
    grid = Grid(3600)
    tiny = shapely.box(10.2, 20.2, 10.4, 20.3)  # owns no cell centre
    assert not shapely.contains_xy(tiny, 10.5, 20.5)
    assert touched_cells(tiny, grid).tolist() == [(90 - 21) * 360 + 190]


@settings(max_examples=examples(200))
@given(
    n=st.integers(1, 500),
    weights=st.lists(st.integers(1, 10**9), min_size=1, max_size=60),
    share=st.sampled_from([1.0, 0.3, 0.05]),
)
def test_largest_remainder_properties(n: int, weights: list[int], share: float) -> None:
    w = np.asarray(weights, dtype=np.uint64)
    counts = allocate_tiles(n, w, lambda idx: idx.astype(np.uint64), share)
    assert counts.sum() == n and (counts >= 0).all()
    quota = n * w.astype(float) / w.astype(float).sum()
    if share == 1.0:
        assert (np.abs(counts - quota) < 1.0 + 1e-9).all()
    else:
        assert counts.max() <= max(int(np.ceil(share * n)), int(np.ceil(n / len(w))))


def _cap_by_full_rank(counts: np.ndarray, remainder: np.ndarray, total: int, n: int, share: float) -> np.ndarray:
    """The tile cap by its definition: every tile ranked, the excess to the first with room."""
    cap = max(int(np.ceil(share * n)), int(np.ceil(n / len(counts))))
    excess = int(np.maximum(counts - cap, 0).sum())
    counts = np.minimum(counts, cap)
    keys = rng.hash64(np.uint64(7), np.arange(len(counts), dtype=np.uint64))
    rank = np.lexsort((keys, np.uint64(total) - remainder))
    while excess:
        room = rank[counts[rank] < cap][:excess]
        counts[room] += 1
        excess -= len(room)
    return counts


@settings(max_examples=examples(300))
@given(
    quotas=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5)), min_size=1, max_size=80),
    share=st.sampled_from([0.5, 0.2, 0.05, 0.01]),
)
def test_the_tile_cap_ranks_only_what_it_needs_and_matches_a_full_ranking(
    quotas: list[tuple[int, int]], share: float
) -> None:
    counts = np.array([q for q, _ in quotas], dtype=np.int64)
    remainder = np.array([r for _, r in quotas], dtype=np.uint64)  # few values: many ties
    n, total = int(counts.sum()) or 1, 6

    def keyed(idx: np.ndarray) -> np.ndarray:
        return rng.hash64(np.uint64(7), idx.astype(np.uint64))

    expected = _cap_by_full_rank(counts.copy(), remainder, total, n, share)
    shared = tile_allocation._Ranking(np.uint64(total) - remainder)  # as pairs of one size share it
    for _ in range(2):  # the second pair reuses the first one's sort
        assert np.array_equal(tile_allocation._cap(counts.copy(), shared, keyed, n, share), expected)


def test_tile_id_ties_make_stripes_and_keyed_ties_do_not() -> None:
    w = np.full(1000, 7, dtype=np.uint64)  # row-constant weights: every remainder ties
    tiles = np.arange(1000, dtype=np.uint64)
    a = allocate_tiles(10, w, lambda idx: tiles[idx], 1.0)
    b = allocate_tiles(10, w, lambda idx: tiles[idx], 1.0)
    assert np.flatnonzero(a).tolist() == list(range(10)) == np.flatnonzero(b).tolist()
    key = rng.stream_key(1, "S4.tile_tie")
    ka = allocate_tiles(10, w, lambda idx: rng.hash64(key, np.uint64(1), tiles[idx]), 1.0)
    kb = allocate_tiles(10, w, lambda idx: rng.hash64(key, np.uint64(2), tiles[idx]), 1.0)
    assert set(np.flatnonzero(ka)) != set(np.flatnonzero(kb))


@settings(max_examples=examples(200))
@given(n=st.integers(1, 300), weights=st.lists(st.integers(1, 50), min_size=1, max_size=80), salt=st.integers(0, 2**32))
def test_selection_equals_a_full_sort(n: int, weights: list[int], salt: int) -> None:
    """The O(N) selection picks exactly the tiles a full (remainder, tie) sort would."""
    w = np.asarray(weights, dtype=np.uint64)
    key = rng.stream_key(salt, "t")
    tie = lambda idx: rng.hash64(key, idx)  # noqa: E731
    counts = allocate_tiles(n, w, tie, 1.0)
    total = w.sum()
    product = np.uint64(n) * w
    base = (product // total).astype(np.int64)
    order = np.lexsort((tie(np.arange(len(w))), total - product % total))
    base[order[: n - base.sum()]] += 1
    np.testing.assert_array_equal(counts, base)


def test_rng_is_keyed_by_content_not_order() -> None:
    key = rng.stream_key(42, "S6.jitter")
    m = np.arange(100, dtype=np.uint64)
    u = rng.uniform(key, m, np.uint64(3))
    perm = np.random.default_rng(0).permutation(100)
    np.testing.assert_array_equal(rng.uniform(key, m[perm], np.uint64(3)), u[perm])
    assert ((u >= 0) & (u < 1)).all() and len(np.unique(u)) == 100
    assert not np.array_equal(u, rng.uniform(rng.stream_key(7, "S6.jitter"), m, np.uint64(3)))


def test_assignment_is_a_permutation_within_pairs() -> None:
    merchant = np.array([1, 1, 2], dtype=np.uint64)
    country = np.array([5, 5, 5], dtype=np.uint64)
    tiles = np.array([10, 11, 10])
    n = np.array([3, 2, 4])
    pair, order, assigned = assign_sites(merchant, country, tiles, n, rng.stream_key(1, "S5"))
    assert pair.tolist() == [0] * 5 + [1] * 4
    assert order.tolist() == [1, 2, 3, 4, 5, 1, 2, 3, 4]
    assert sorted(assigned[:5].tolist()) == [10, 10, 10, 11, 11]
    assert assigned[5:].tolist() == [10] * 4


@pytest.mark.parametrize(
    ("country", "max_attempts"),
    [
        (shapely.Polygon([(10.0, 40.0), (10.9, 40.0), (10.05, 40.9)]), 8),  # half the cell
        (
            shapely.Polygon([(9.5, 40.2), (10.003, 40.2), (10.003, 40.21), (9.5, 40.21)]),
            1,
        ),  # a sliver: triangulated phase
    ],
)
def test_jitter_stays_in_tile_and_country_and_is_distinct(country: shapely.Polygon, max_attempts: int) -> None:
    grid = Grid(3600)
    shapely.prepare(country)
    tile = np.full(200, (90 - 41) * 360 + 190, dtype=np.int64)
    fields = (np.arange(200, dtype=np.uint64), np.full(200, 7, np.uint64), np.arange(200, dtype=np.uint64))
    policy = S6UniformV1(mode="uniform_v1", max_attempts=max_attempts)
    lon, lat, attempts = place_sites(tile, fields, country, grid, rng.stream_key(1, "S6"), policy)
    assert shapely.contains_xy(country, lon, lat).all()
    assert ((lon >= 10) & (lon <= 11) & (lat >= 40) & (lat <= 41)).all()
    assert len(set(zip(lon.tolist(), lat.tolist(), strict=True))) == 200
    assert attempts.max() > 1
    again = place_sites(tile, fields, country, grid, rng.stream_key(1, "S6"), policy)
    np.testing.assert_array_equal(again[0], lon)


def test_metric_definitions() -> None:
    assert metrics.country_gini(np.array([5, 5, 5])) == pytest.approx(0.0)
    assert metrics.country_gini(np.array([0, 0, 10])) == pytest.approx(0.0)  # zeros are not active
    assert metrics.country_gini(np.array([1, 3])) == pytest.approx((-1 * 1 + 1 * 3) / (2 * 4))
    share, k = metrics.top_share(np.arange(1, 78), 0.05)
    assert k == 4 and share == pytest.approx(sum(range(74, 78)) / sum(range(1, 78)))
    assert metrics.top_share(np.array([3, 1]), 0.01) == (0.75, 1)
    nn = metrics.nn_metrics(metrics.NNSummary.of(np.array([0.0] * 60 + [1.0] * 40)))
    assert np.isnan(nn["nn_ratio"])  # p50 = 0 is a failure, never a perfect score


def test_nearest_neighbour_is_great_circle_and_exact() -> None:
    lon = np.array([179.9, -179.9, 0.0, 0.0])
    lat = np.array([0.0, 0.0, 89.9, -89.9])
    d = metrics.nearest_neighbour_km(lon, lat)
    assert d[0] == pytest.approx(0.2 * np.pi / 180 * metrics.EARTH_RADIUS_KM, rel=1e-9)
    g = np.random.default_rng(3)
    lon, lat = g.uniform(-180, 180, 400), np.degrees(np.arcsin(g.uniform(-1, 1, 400)))
    xyz = metrics.unit_vectors(lon, lat)
    arc = np.arccos(np.clip(xyz @ xyz.T, -1, 1))
    np.fill_diagonal(arc, np.inf)
    np.testing.assert_allclose(
        metrics.nearest_neighbour_km(lon, lat), arc.min(axis=1) * metrics.EARTH_RADIUS_KM, rtol=1e-6
    )


@settings(max_examples=examples(100))
@given(
    key=st.integers(0, 2**64 - 1),
    fields=st.lists(st.lists(st.integers(0, 2**64 - 1), min_size=5, max_size=5), min_size=2, max_size=5),
    cut=st.integers(0, 5),
)
def test_a_keyed_hash_continued_equals_the_whole_hash(key: int, fields: list[list[int]], cut: int) -> None:
    arrays = [np.asarray(f, dtype=np.uint64) for f in fields]
    cut = min(cut, len(arrays))
    whole = rng.hash64(np.uint64(key), *arrays)
    assert np.array_equal(rng.extend(rng.hash64(np.uint64(key), *arrays[:cut]), *arrays[cut:]), whole)
    assert np.array_equal(rng.uniform(np.uint64(key), *arrays), rng.unit(whole))
    assert np.array_equal(
        rng.extend(rng.hash64(np.uint64(key), *arrays), np.uint64(3)), rng.hash64(np.uint64(key), *arrays, 3)
    )
