"""Nearest-neighbour distances per latitude band, exactly equal to a global computation.

A band first finds each site's nearest neighbour among its own sites (distance ``d``); any
closer site elsewhere must lie within ``d`` of arc, hence within ``d`` of latitude, so only
the sites whose in-band neighbour is farther than the band's edge query again, against the
sites within ``max(d)`` degrees of latitude of the band. A band with a single site widens
its window until it holds a neighbour, then takes that neighbour's distance as the halo.
The answer is exact, with no tuning knob. Each band task reads only the rows it needs
through a ``BandReader``: from arrays in memory, or from a partitioned ``site_locations``
with a latitude filter, so no task and not the driver ever holds every site's coordinates.
scipy's cKDTree runs on 3-D unit vectors (euclidean chord, converted to arc): a global
tree on the same vectors gives the same distances bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pyarrow.parquet as pq
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from seg1b_dask.core.metrics import EARTH_RADIUS_KM, unit_vectors
from seg1b_dask.engine.execution import compute

# (lo, hi, hi inclusive) -> lon, lat of every site with lo <= lat < hi (or <= hi)
BandReader = Callable[[float, float, bool], tuple[NDArray[np.float64], NDArray[np.float64]]]
LAT_BINS = np.linspace(-90.0, 90.0, 3601)  # 0.05° latitude histogram: band edges without the sites


def _chord_to_arc(chord: NDArray[np.float64]) -> NDArray[np.float64]:
    return 2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))


class ArrayBands:
    """A ``BandReader`` over coordinates already in memory."""

    def __init__(self, lon: NDArray[np.float64], lat: NDArray[np.float64]) -> None:
        self.lon, self.lat = lon, lat

    def __call__(self, lo: float, hi: float, inclusive: bool) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        sel = (self.lat >= lo) & ((self.lat <= hi) if inclusive else (self.lat < hi))
        return self.lon[sel], self.lat[sel]


class ParquetBands:
    """A ``BandReader`` over Parquet part files (``lon_deg``, ``lat_deg``), filtered by latitude."""

    def __init__(self, files: list[Path]) -> None:
        self.files = [str(f) for f in files]

    def __call__(self, lo: float, hi: float, inclusive: bool) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        table = pq.read_table(
            self.files,
            columns=["lon_deg", "lat_deg"],
            filters=[("lat_deg", ">=", lo), ("lat_deg", "<=" if inclusive else "<", hi)],
        )
        return table.column(0).to_numpy(), table.column(1).to_numpy()


def band_arcs(read: BandReader, lo: float, hi: float, last: bool) -> NDArray[np.float64]:
    """Arc (radians) to the nearest other site for every site with lo <= lat < hi (<= hi
    on the last band), in any order."""
    lon, lat = read(lo, hi, last)
    if len(lon) == 0:
        return np.zeros(0)
    query = unit_vectors(lon, lat)
    if len(query) >= 2:
        chord, _ = cKDTree(query).query(query, k=2)
        arc = _chord_to_arc(chord[:, 1])
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
    chord, _ = cKDTree(unit_vectors(lon2, lat2)).query(query[risky], k=2)
    arc[risky] = _chord_to_arc(chord[:, 1])
    return arc


def band_edges(lat_histogram: NDArray[np.int64], n_bands: int) -> list[float]:
    """Latitude edges of about equal-count bands, on ``LAT_BINS`` boundaries (first −90, last 90)."""
    cumulative = np.cumsum(lat_histogram)
    total = int(cumulative[-1]) if len(cumulative) else 0
    if n_bands <= 1 or total == 0:
        return [-90.0, 90.0]
    cuts = np.searchsorted(cumulative, np.linspace(0, total, n_bands + 1)[1:-1])
    inner = np.unique(LAT_BINS[1:][cuts])
    return [-90.0, *[float(e) for e in inner if -90.0 < e < 90.0], 90.0]


def nearest_neighbour_km_bands(
    read: BandReader,
    n_sites: int,
    lat_histogram: NDArray[np.int64],
    sites_per_band: int = 200_000,
    alongside: Sequence[Any] = (),
) -> tuple[NDArray[np.float64], list[Any]]:
    """Nearest-neighbour great-circle distance (km) of every site, sorted; one task per band.
    ``alongside``: other delayed tasks computed in the same graph (their results second)."""
    if n_sites < 2:
        return np.zeros(0), compute(list(alongside))
    edges = band_edges(lat_histogram, int(np.ceil(n_sites / sites_per_band)))
    tasks = [dask.delayed(band_arcs)(read, edges[i], edges[i + 1], i == len(edges) - 2) for i in range(len(edges) - 1)]
    results = compute([*tasks, *alongside])
    arcs = results[: len(tasks)]
    return np.sort(np.concatenate(arcs) * EARTH_RADIUS_KM), results[len(tasks) :]


def nearest_neighbour_km_chunked(
    lon: NDArray[np.float64], lat: NDArray[np.float64], sites_per_band: int = 200_000
) -> NDArray[np.float64]:
    """The same, for coordinates in memory."""
    histogram, _ = np.histogram(lat, bins=LAT_BINS)
    return nearest_neighbour_km_bands(ArrayBands(lon, lat), len(lon), histogram, sites_per_band)[0]
