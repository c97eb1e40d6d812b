"""``site_locations`` parts are GeoParquet 1.1: GeoPandas opens a part as it is, its points are
exactly ``lon_deg``/``lat_deg`` in EPSG:4326, and the ``bbox`` covering lets readers prune."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import geopandas
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyproj
import pytest
import shapely
from conftest import SharedRun

from seg1b_dask.chain.runner import RunResult
from seg1b_dask.grading.scoring import load_sites
from seg1b_dask.io import geoparquet
from seg1b_dask.io.datasets import SITE_LOCATIONS

KEPT = [
    ("merchant_id", pa.uint64()),
    ("legal_country_iso", pa.string()),
    ("site_order", pa.int32()),
    ("lon_deg", pa.float64()),
    ("lat_deg", pa.float64()),
]


def _geo(path: Path) -> dict[str, Any]:
    metadata = pq.ParquetFile(path).metadata.metadata
    assert set(metadata) == {b"geo"}, "nothing but the GeoParquet metadata (no schema, no pandas, nothing run-bound)"
    return json.loads(metadata[b"geo"])


def _check_geo(geo: dict[str, Any], lon: np.ndarray, lat: np.ndarray) -> None:
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry" and list(geo["columns"]) == ["geometry"]
    column = geo["columns"]["geometry"]
    assert column["encoding"] == "WKB" and column["geometry_types"] == ["Point"]
    assert pyproj.CRS.from_json_dict(column["crs"]) == pyproj.CRS.from_epsg(4326)
    assert column["covering"] == {"bbox": {c: ["bbox", c] for c in ("xmin", "ymin", "xmax", "ymax")}}
    if len(lon):
        assert column["bbox"] == [lon.min(), lat.min(), lon.max(), lat.max()]
    else:
        assert "bbox" not in column


def _sites(n: int, seed: int = 1) -> pa.Table:
    g = np.random.default_rng(seed)
    return pa.table(
        {
            "merchant_id": pa.array(np.arange(n), pa.uint64()),
            "legal_country_iso": pa.array(["NZ"] * n),
            "site_order": pa.array(np.arange(1, n + 1), pa.int32()),
            "tile_id": pa.array(np.arange(n), pa.int64()),  # not egress: dropped
            "lon_deg": g.uniform(-180.0, 180.0, n),
            "lat_deg": g.uniform(-90.0, 90.0, n),
        }
    )


# -- the builder, no run ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 257])
def test_points_repeat_lon_lat_exactly_with_valid_geo_metadata(n: int) -> None:
    table = _sites(n).select(["lon_deg", "lat_deg"])
    out, metadata = geoparquet.with_points(table)
    assert out.schema.names == ["lon_deg", "lat_deg", "geometry", "bbox"] and list(metadata) == [b"geo"]
    assert out.schema.field("geometry") == geoparquet.FIELDS[0] and out.schema.field("bbox") == geoparquet.FIELDS[1]
    lon, lat = table.column("lon_deg").to_numpy(), table.column("lat_deg").to_numpy()
    points = shapely.from_wkb(out.column("geometry").to_numpy(zero_copy_only=False))
    assert (shapely.get_type_id(points) == shapely.GeometryType.POINT).all()
    assert np.array_equal(shapely.get_x(points), lon) and np.array_equal(shapely.get_y(points), lat)
    bbox = out.column("bbox").combine_chunks()
    for corner, want in zip(("xmin", "ymin", "xmax", "ymax"), (lon, lat, lon, lat), strict=True):
        assert np.array_equal(bbox.field(corner).to_numpy(), want)
    assert all(len(w) == 21 and w[:5] == b"\x01\x01\x00\x00\x00" for w in out.column("geometry").to_pylist())
    _check_geo(json.loads(metadata[b"geo"]), lon, lat)


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_wkb_points_are_the_bytes_geos_writes(n: int) -> None:
    """The 21-byte records equal GEOS's own ISO little-endian WKB, signed zeros, poles and
    the antimeridian included."""
    g = np.random.default_rng(n)
    x = np.r_[[-180.0, 180.0, -0.0, 0.0], g.uniform(-180.0, 180.0, n)]
    y = np.r_[[90.0, -90.0, 0.0, -0.0], g.uniform(-90.0, 90.0, n)]
    expected = shapely.to_wkb(shapely.points(x, y), byte_order=1, output_dimension=2, flavor="iso")
    assert geoparquet.wkb_points(x, y).equals(pa.array(expected, pa.binary()))


def test_parts_are_geoparquet_and_byte_identical_for_the_same_rows(tmp_path: Path) -> None:
    """Each part's extent is its own rows'; the same rows give the same bytes."""
    table = _sites(25)
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        assert SITE_LOCATIONS.write(tmp_path / run, "NZ", table, rows_per_part=10) == 3
    parts = SITE_LOCATIONS.files(tmp_path / "a")
    assert [p.read_bytes() for p in parts] == [p.read_bytes() for p in SITE_LOCATIONS.files(tmp_path / "b")]
    for i, part in enumerate(parts):
        rows = table.slice(10 * i, 10)
        _check_geo(_geo(part), rows.column("lon_deg").to_numpy(), rows.column("lat_deg").to_numpy())
        frame = geopandas.read_parquet(part)
        assert frame.crs.to_epsg() == 4326 and len(frame) == rows.num_rows
    read = SITE_LOCATIONS.read(tmp_path / "a")
    assert read.schema == SITE_LOCATIONS.schema and read.num_rows == 25
    assert read.select([n for n, _ in KEPT]).equals(table.select([n for n, _ in KEPT]))


def test_a_country_without_rows_is_an_empty_geoparquet_part(tmp_path: Path) -> None:
    assert SITE_LOCATIONS.write(tmp_path, "NZ", _sites(0)) == 1
    (part,) = SITE_LOCATIONS.files(tmp_path)
    _check_geo(_geo(part), np.zeros(0), np.zeros(0))
    frame = geopandas.read_parquet(part)
    assert len(frame) == 0 and frame.crs.to_epsg() == 4326


# -- a published run ---------------------------------------------------------------------------


@pytest.fixture
def run(seed42_warm: SharedRun) -> RunResult:
    """Seed 42's baseline run on the 1A stand-in (the session's read-only root)."""
    return seed42_warm.result


@pytest.mark.e2e
def test_every_published_part_opens_with_geopandas(run: RunResult) -> None:
    egress = run.outputs["site_locations"]
    parts = SITE_LOCATIONS.files(egress)
    assert len(parts) == len(SITE_LOCATIONS.countries(egress)) > 50  # one part per country here
    lons = []
    for part in parts:
        frame = geopandas.read_parquet(part)
        assert frame.crs == "EPSG:4326" and frame.crs.to_epsg() == 4326
        assert frame.geometry.name == "geometry" and (frame.geometry.geom_type == "Point").all()
        lon, lat = frame["lon_deg"].to_numpy(), frame["lat_deg"].to_numpy()
        assert np.array_equal(frame.geometry.x.to_numpy(), lon) and np.array_equal(frame.geometry.y.to_numpy(), lat)
        table = pq.read_table(part)
        assert table.schema.names[:5] == [n for n, _ in KEPT] and table.schema == SITE_LOCATIONS.schema
        bbox = table.column("bbox").combine_chunks()
        for corner, want in zip(("xmin", "ymin", "xmax", "ymax"), (lon, lat, lon, lat), strict=True):
            assert np.array_equal(bbox.field(corner).to_numpy(), want)
        _check_geo(_geo(part), lon, lat)
        lons.append(lon)
    # The scorer reads the same coordinates, unchanged.
    assert np.array_equal(load_sites(egress).lon, np.concatenate(lons))


@pytest.mark.e2e
def test_the_bbox_covering_prunes_a_published_part(run: RunResult) -> None:
    part = SITE_LOCATIONS.files(run.outputs["site_locations"], ["DE"])[0]
    xmin, ymin, xmax, ymax = _geo(part)["columns"]["geometry"]["bbox"]
    assert len(geopandas.read_parquet(part, bbox=(xmin, ymin, xmax, ymax))) == pq.ParquetFile(part).metadata.num_rows
    assert len(geopandas.read_parquet(part, bbox=(xmax + 1.0, ymin, xmax + 2.0, ymax))) == 0
