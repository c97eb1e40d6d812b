"""Vendored reference data (DESIGN §9): country polygons, country table, places.

Loaded lazily and cached per process, so Dask tasks load them inside the task (never
embedded in graphs) and pay the cost once per worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

import numpy as np
import pyarrow.parquet as pq
import shapely
from numpy.typing import NDArray

from seg1b_dask.io.package import REFDATA_DIR

REGIONS = ("Africa", "Asia", "Europe", "North America", "South America", "Oceania")


@cache
def refdata_version() -> str:
    """Digest of the vendored files (from their provenance record)."""
    from seg1b_dask.io.hashing import canonical_json, sha256_hex

    provenance = json.loads((REFDATA_DIR / "PROVENANCE.json").read_text())
    return sha256_hex(canonical_json(provenance["files"]))


@dataclass(frozen=True)
class CountryTable:
    """Countries with polygons, in ascending ISO order; ``country_id`` = index + 1."""

    iso2: NDArray[np.str_]
    region: NDArray[np.str_]
    population: NDArray[np.int64]
    geometry: NDArray[np.object_]

    def country_id(self, iso2: str) -> int:
        pos = int(np.searchsorted(self.iso2, iso2))
        if pos >= len(self.iso2) or self.iso2[pos] != iso2:
            raise KeyError(iso2)
        return pos + 1

    def eligible(self, min_population: int) -> NDArray[np.bool_]:
        return self.population >= min_population


@cache
def countries() -> CountryTable:
    polys = pq.read_table(REFDATA_DIR / "country_polygons.parquet").to_pydict()
    meta = pq.read_table(REFDATA_DIR / "countries.parquet").to_pydict()
    by_iso = {iso: i for i, iso in enumerate(meta["iso2"])}
    iso2 = np.asarray(polys["iso2"], dtype="U2")
    order = np.argsort(iso2, kind="stable")
    iso2 = iso2[order]
    geoms = shapely.from_wkb(np.asarray(polys["wkb"], dtype=object)[order])
    shapely.prepare(geoms)
    region = np.asarray([meta["region"][by_iso[i]] if i in by_iso else "" for i in iso2], dtype="U16")
    population = np.asarray([meta["population"][by_iso[i]] if i in by_iso else 0 for i in iso2], dtype=np.int64)
    return CountryTable(iso2=iso2, region=region, population=population, geometry=geoms)


@cache
def known_iso_codes() -> frozenset[str]:
    """Every ISO alpha-2 code in the reference country table (with or without polygon)."""
    meta = pq.read_table(REFDATA_DIR / "countries.parquet", columns=["iso2"]).column(0).to_pylist()
    return frozenset(meta) | frozenset(countries().iso2.tolist())


@dataclass(frozen=True)
class EdgeTable:
    """Every ring edge of every country polygon, for scanline rasterization."""

    x0: NDArray[np.float64]
    y0: NDArray[np.float64]
    x1: NDArray[np.float64]
    y1: NDArray[np.float64]
    country_id: NDArray[np.int16]


@cache
def country_edges() -> EdgeTable:
    table = countries()
    xs0, ys0, xs1, ys1, ids = [], [], [], [], []
    for cid, geom in enumerate(table.geometry, start=1):
        rings = shapely.get_rings(shapely.get_parts(geom))
        for ring in rings:
            xy = shapely.get_coordinates(ring)
            xs0.append(xy[:-1, 0])
            ys0.append(xy[:-1, 1])
            xs1.append(xy[1:, 0])
            ys1.append(xy[1:, 1])
            ids.append(np.full(len(xy) - 1, cid, dtype=np.int16))
    y0 = np.concatenate(ys0)
    y1 = np.concatenate(ys1)
    keep = y0 != y1  # horizontal edges never cross a row centre line
    return EdgeTable(
        x0=np.concatenate(xs0)[keep],
        y0=y0[keep],
        x1=np.concatenate(xs1)[keep],
        y1=y1[keep],
        country_id=np.concatenate(ids)[keep],
    )


@dataclass(frozen=True)
class PlaceTable:
    """Vendored GeoNames places of countries with a polygon, in file order."""

    country_id: NDArray[np.int16]
    lon: NDArray[np.float64]
    lat: NDArray[np.float64]
    population: NDArray[np.int64]

    def at_least(self, min_population: int) -> PlaceTable:
        keep = self.population >= min_population
        return PlaceTable(self.country_id[keep], self.lon[keep], self.lat[keep], self.population[keep])


@cache
def places() -> PlaceTable:
    table = pq.read_table(
        REFDATA_DIR / "places.parquet", columns=["iso2", "lon_deg", "lat_deg", "population"]
    ).to_pydict()
    codes = countries().iso2
    iso = np.asarray(table["iso2"], dtype="U2")
    pos = np.minimum(np.searchsorted(codes, iso), len(codes) - 1)
    known = codes[pos] == iso
    return PlaceTable(
        (pos[known] + 1).astype(np.int16),
        np.asarray(table["lon_deg"], dtype=np.float64)[known],
        np.asarray(table["lat_deg"], dtype=np.float64)[known],
        np.asarray(table["population"], dtype=np.int64)[known],
    )


@cache
def country_centres() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(lon, lat) of each country (in ``countries()`` order): the population-weighted centre
    of its places on the unit sphere, or its polygon's representative point without places."""
    from seg1b_dask.core.metrics import unit_vectors

    table = countries()
    p = places()
    xyz = unit_vectors(p.lon, p.lat) * p.population[:, None]
    summed = np.column_stack(
        [np.bincount(p.country_id - 1, weights=xyz[:, axis], minlength=len(table.iso2)) for axis in range(3)]
    )
    points = shapely.get_coordinates(shapely.point_on_surface(table.geometry))
    norm = np.linalg.norm(summed, axis=1)
    has = norm > 0
    safe = np.where(has, norm, 1.0)
    lon = np.where(has, np.degrees(np.arctan2(summed[:, 1], summed[:, 0])), points[:, 0])
    lat = np.where(has, np.degrees(np.arcsin(np.clip(summed[:, 2] / safe, -1.0, 1.0))), points[:, 1])
    return lon, lat
