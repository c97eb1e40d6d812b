"""Nearest-neighbour distances per latitude band, exactly equal to a global computation.

A band first finds each site's nearest neighbour among its own sites (distance ``d``); any
closer site elsewhere must lie within ``d`` of arc, hence within ``d`` of latitude, so only
the sites whose in-band neighbour is farther than the band's edge query again, against the
sites within ``max(d)`` degrees of latitude of the band that lie within ``max(d)`` of one of
them. A band with a single site widens
its window until it holds a neighbour, then takes that neighbour's distance as the halo.
The answer is exact, with no tuning knob. Each band task reads only the rows it needs
through a ``BandReader``: from arrays in memory, or from files sorted by latitude, so no task
and not the driver ever holds every site's coordinates.
scipy's cKDTree runs on 3-D unit vectors (euclidean chord, converted to arc): a global
tree on the same vectors gives the same distances bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from seg1b_dask.core import metrics, quantiles
from seg1b_dask.core.metrics import EARTH_RADIUS_KM, unit_vectors
from seg1b_dask.engine.execution import compute
from seg1b_dask.io.lineage import replaced

# (lo, hi, hi inclusive) -> lon, lat of every site with lo <= lat < hi (or <= hi)
BandReader = Callable[[float, float, bool], tuple[NDArray[np.float64], NDArray[np.float64]]]
LAT_BINS = np.linspace(-90.0, 90.0, 3601)  # 0.05° latitude histogram: band edges without the sites
HALO_SITES_PER_QUERY = 1_000_000  # halo sites checked at a time against the risky sites


def _chord_to_arc(chord: NDArray[np.float64]) -> NDArray[np.float64]:
    return 2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))


class ArrayBands:
    """A ``BandReader`` over coordinates already in memory."""

    def __init__(self, lon: NDArray[np.float64], lat: NDArray[np.float64]) -> None:
        self.lon, self.lat = lon, lat

    def __call__(self, lo: float, hi: float, inclusive: bool) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        sel = (self.lat >= lo) & ((self.lat <= hi) if inclusive else (self.lat < hi))
        return self.lon[sel], self.lat[sel]


def write_sorted_by_latitude(path: Path, lon: NDArray[np.float64], lat: NDArray[np.float64]) -> None:
    """One batch's coordinates sorted by latitude, for ``SortedBands``: row 0 the latitudes
    (contiguous, so a binary search touches a few pages), row 1 the longitudes."""
    order = np.argsort(lat, kind="stable")
    with replaced(path) as tmp, tmp.open("wb") as fh:  # a lost worker's late copy never tears it
        np.save(fh, np.stack([lat[order], lon[order]]))


class SortedBands:
    """A ``BandReader`` over files of ``write_sorted_by_latitude``: each band reads only its
    latitude slice of every file (two binary searches on a memory map), so the bands together
    read every site about once, not once per band."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __call__(self, lo: float, hi: float, inclusive: bool) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        parts = []
        for path in self.files:
            lat_lon = np.load(path, mmap_mode="r")
            first = np.searchsorted(lat_lon[0], lo, side="left")
            last = np.searchsorted(lat_lon[0], hi, side="right" if inclusive else "left")
            parts.append(np.array(lat_lon[:, first:last]))
        both = np.concatenate(parts, axis=1) if parts else np.zeros((2, 0))
        return both[1], both[0]


def band_arcs(read: BandReader, lo: float, hi: float, last: bool) -> NDArray[np.float64]:
    """Arc (radians) to the nearest other site for every site with lo <= lat < hi (<= hi
    on the last band), in the order ``read`` gives them."""
    lon, lat = read(lo, hi, last)
    if len(lon) == 0:
        return np.zeros(0)
    query = unit_vectors(lon, lat)
    if len(query) >= 2:
        tree = cKDTree(query)
        # Queried in the tree's own leaf order (neighbouring nodes one after another), kept in site order.
        chord, _ = tree.query(query[tree.indices], k=2)
        arc = np.empty(len(query))
        arc[tree.indices] = _chord_to_arc(chord[:, 1])
    else:
        arc = np.full(1, np.inf)
    risky = np.flatnonzero(np.degrees(arc) > np.minimum(lat - lo, hi - lat))
    if not len(risky):
        return arc
    halo = float(np.degrees(arc[risky]).max())
    if not np.isfinite(halo):  # a lone site: widen until a neighbour shows, then use its distance
        halo = 1.0
        while True:
            lon2, lat2 = read(lo - halo, hi + halo, True)
            if len(lon2) >= 2 or halo >= 180.0:
                break
            halo *= 2.0
        if len(lon2) < 2:
            return np.zeros(1)  # one site on Earth: no neighbour (callers treat n < 2 as undefined)
        chord, _ = cKDTree(unit_vectors(lon2, lat2)).query(query, k=2)
        halo = max(halo, float(np.degrees(_chord_to_arc(chord[:, 1])).max()))
    lon2, lat2 = read(lo - halo, hi + halo, True)
    near = np.flatnonzero(_cells_near(lon[risky], lat[risky], halo)(lon2, lat2))
    near = near[_near_any(query[risky], lon2[near], lat2[near], np.radians(halo))]
    chord, _ = cKDTree(unit_vectors(lon2[near], lat2[near])).query(query[risky], k=2)
    arc[risky] = _chord_to_arc(chord[:, 1])
    return arc


def _cells_near(
    lon: NDArray[np.float64], lat: NDArray[np.float64], arc_deg: float
) -> Callable[[NDArray[np.float64], NDArray[np.float64]], NDArray[np.bool_]]:
    """A test of "in a latitude-longitude cell that may hold a point within ``arc_deg`` of a
    centre (lon, lat)": a cheap superset of the halo's useful sites, before the exact search.
    From a centre at latitude φ, a point within arc a differs by at most a in latitude and by
    at most asin(sin a / cos φ) in longitude (any longitude once sin a ≥ cos φ)."""
    cols = int(np.ceil(360.0 / max(arc_deg, 0.05)))
    cell = 360.0 / cols  # whole columns around the world; rows and columns get a cell of slack
    rows = int(np.ceil(180.0 / cell))
    arc = np.radians(min(arc_deg, 180.0)) * (1 + 1e-6) + 1e-12
    ratio = np.sin(arc) / np.maximum(np.cos(np.radians(lat)), 1e-300)
    span = np.where(ratio < 1.0, np.degrees(np.arcsin(np.minimum(ratio, 1.0))), 180.0) + 1e-9
    marked = np.zeros((rows + 1, cols), dtype=bool)
    whole = (span >= 180.0 - 2 * cell) | (arc >= np.pi / 2)
    first_row = np.floor((np.maximum(lat - np.degrees(arc), -90.0) + 90.0) / cell).astype(np.int64) - 1
    last_row = np.floor((np.minimum(lat + np.degrees(arc), 90.0) + 90.0) / cell).astype(np.int64) + 1
    first_row, last_row = np.clip(first_row, 0, rows), np.clip(last_row, 0, rows)
    for top, bottom in zip(first_row[whole].tolist(), last_row[whole].tolist(), strict=True):
        marked[top : bottom + 1] = True
    part = ~whole
    lo = np.floor((lon[part] - span[part] + 180.0) / cell).astype(np.int64) - 1
    width = np.floor((lon[part] + span[part] + 180.0) / cell).astype(np.int64) + 1 - lo + 1
    height = last_row[part] - first_row[part] + 1
    per_centre = width * height
    centre = np.repeat(np.arange(len(lo)), per_centre)
    k = np.arange(int(per_centre.sum())) - np.repeat(np.cumsum(per_centre) - per_centre, per_centre)
    marked[first_row[part][centre] + k // width[centre], (lo[centre] + k % width[centre]) % cols] = True

    def test(lon2: NDArray[np.float64], lat2: NDArray[np.float64]) -> NDArray[np.bool_]:
        row = np.floor((lat2 + 90.0) / cell).astype(np.int64)
        col = np.floor((lon2 + 180.0) / cell).astype(np.int64) % cols
        return marked[np.clip(row, 0, rows), col]

    return test


def _near_any(
    centres: NDArray[np.float64], lon: NDArray[np.float64], lat: NDArray[np.float64], arc: float
) -> NDArray[np.bool_]:
    """Which of (lon, lat) lie within ``arc`` (radians, with slack) of a centre (unit
    vectors): a halo can span many degrees of latitude around the world, but the sites that
    can be a risky site's nearest neighbour lie near one of them. Checked a million at a time."""
    reach = 2.0 * np.sin(min(arc, np.pi) / 2.0) * (1 + 1e-9) + 1e-12
    tree = cKDTree(centres)
    near = np.zeros(len(lon), dtype=bool)
    for first in range(0, len(lon), HALO_SITES_PER_QUERY):
        part = slice(first, first + HALO_SITES_PER_QUERY)
        chord, _ = tree.query(unit_vectors(lon[part], lat[part]), k=1, distance_upper_bound=reach)
        near[part] = np.isfinite(chord)
    return near


def band_edges(lat_histogram: NDArray[np.int64], n_bands: int) -> list[float]:
    """Latitude edges of about equal-count bands, on ``LAT_BINS`` boundaries (first −90, last 90)."""
    cumulative = np.cumsum(lat_histogram)
    total = int(cumulative[-1]) if len(cumulative) else 0
    if n_bands <= 1 or total == 0:
        return [-90.0, 90.0]
    cuts = np.searchsorted(cumulative, np.linspace(0, total, n_bands + 1)[1:-1])
    inner = np.unique(LAT_BINS[1:][cuts])
    return [-90.0, *[float(e) for e in inner if -90.0 < e < 90.0], 90.0]


def _band_tasks(read: BandReader, n_sites: int, lat_histogram: NDArray[np.int64], sites_per_band: int) -> list[Any]:
    edges = band_edges(lat_histogram, int(np.ceil(n_sites / sites_per_band)))
    return [(read, edges[i], edges[i + 1], i == len(edges) - 2) for i in range(len(edges) - 1)]


def nearest_neighbour_km_bands(
    read: BandReader,
    n_sites: int,
    lat_histogram: NDArray[np.int64],
    sites_per_band: int = 200_000,
    alongside: Sequence[Any] = (),
) -> tuple[NDArray[np.float64], list[Any]]:
    """Nearest-neighbour great-circle distance (km) of every site, sorted; one task per band.
    ``alongside``: other delayed tasks computed in the same graph (their results second).
    For sites in memory; a run's sites are summarised by ``nearest_neighbour_summary``."""
    if n_sites < 2:
        return np.zeros(0), compute(list(alongside))
    tasks = [dask.delayed(band_arcs)(*band) for band in _band_tasks(read, n_sites, lat_histogram, sites_per_band)]
    results = compute([*tasks, *alongside])
    arcs = results[: len(tasks)]
    return np.sort(np.concatenate(arcs) * EARTH_RADIUS_KM), results[len(tasks) :]


def _band_counts(read: BandReader, lo: float, hi: float, last: bool, path: Path) -> tuple[NDArray, NDArray]:
    """One band's distances (km), sorted into ``path``; their selection and report counts."""
    km = np.sort(band_arcs(read, lo, hi, last) * EARTH_RADIUS_KM)
    with replaced(path) as tmp, tmp.open("wb") as fh:  # a lost worker's late copy never tears it
        np.save(fh, km)
    return quantiles.bin_counts(km), metrics.nn_report_counts(km)


def _summed(parts: list[tuple[NDArray, NDArray]]) -> tuple[NDArray, NDArray]:
    return sum(p[0] for p in parts), sum(p[1] for p in parts)  # type: ignore[return-value]


def _tree_sum(parts: list[Any], fan_in: int = 16) -> Any:
    """Sum the bands' counts on the workers, ``fan_in`` at a time: one array reaches the driver."""
    while len(parts) > 1:
        parts = [dask.delayed(_summed)(parts[i : i + fan_in]) for i in range(0, len(parts), fan_in)]
    return parts[0]


def _band_distinct(path: Path, bins: list[int]) -> dict[int, tuple[NDArray, NDArray]]:
    return quantiles.distinct_in_bins(np.load(path, mmap_mode="r"), bins)


def nearest_neighbour_summary(
    read: BandReader,
    n_sites: int,
    lat_histogram: NDArray[np.int64],
    scratch: Path,
    sites_per_band: int = 200_000,
    alongside: Sequence[Any] = (),
) -> tuple[metrics.NNSummary, list[Any]]:
    """The exact quantiles and report histogram of every site's nearest-neighbour distance,
    with no per-site array in the driver: each band task keeps its sorted distances in
    ``scratch`` and returns counts per fine bin (summed on the workers); a second round
    returns only the distinct values of the bins holding the needed ranks."""
    if n_sites < 2:
        return metrics.NNSummary(None, metrics.nn_report_counts(np.zeros(0))), compute(list(alongside))
    bands = _band_tasks(read, n_sites, lat_histogram, sites_per_band)
    paths = [scratch / f"nn-band-{i:05d}.npy" for i in range(len(bands))]
    counted = [dask.delayed(_band_counts)(*band, path) for band, path in zip(bands, paths, strict=True)]
    (select, report), *extras = compute([_tree_sum(counted), *alongside])
    if select[quantiles.NAN_BIN]:  # an undefined distance: undefined quantiles, which fail closed
        return metrics.NNSummary(np.full(len(metrics.NN_QUANTILES), np.nan), report), extras
    plan = quantiles.plan(int(select.sum()), metrics.NN_QUANTILES)
    where = quantiles.locate(select, plan.ranks)
    bins = sorted({b for b, _ in where.values()})
    distinct = compute([dask.delayed(_band_distinct)(path, bins) for path in paths])
    value_at = {rank: quantiles.kth([d[b] for d in distinct], k) for rank, (b, k) in where.items()}
    return metrics.NNSummary(quantiles.interpolate(plan, value_at), report), extras


def nearest_neighbour_km_chunked(
    lon: NDArray[np.float64], lat: NDArray[np.float64], sites_per_band: int = 200_000
) -> NDArray[np.float64]:
    """The same, for coordinates in memory."""
    histogram, _ = np.histogram(lat, bins=LAT_BINS)
    return nearest_neighbour_km_bands(ArrayBands(lon, lat), len(lon), histogram, sites_per_band)[0]
