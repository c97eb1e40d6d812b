"""GeoParquet 1.1 for point datasets: a WKB ``geometry`` column, a ``bbox`` covering struct
and the ``geo`` file metadata, so GeoParquet readers open a part as it is and can prune row
groups by bounding box. Everything is built from the part's own rows (no
timestamps, paths or library versions), so the same rows always give the same bytes."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from seg1b_dask.errors import Code, InternalError

GEOMETRY = "geometry"
BBOX = "bbox"
_CORNERS = ("xmin", "ymin", "xmax", "ymax")
FIELDS = [
    pa.field(GEOMETRY, pa.binary()),
    pa.field(BBOX, pa.struct([pa.field(c, pa.float64()) for c in _CORNERS])),
]
COLUMNS = frozenset(f.name for f in FIELDS)

_WGS84_REALIZATIONS = ("Transit", "G730", "G873", "G1150", "G1674", "G1762", "G2139", "G2296")
# EPSG:4326 (WGS 84) as PROJJSON, stated rather than left to GeoParquet's OGC:CRS84 default so
# readers that key on EPSG codes identify it. WKB stays (x, y) = (lon, lat), as GeoParquet
# requires whatever the CRS's axis order. Ensemble members carry no ids (as GeoPandas writes
# them: some PROJ releases refuse member ids).
CRS_EPSG_4326: dict[str, Any] = {
    "$schema": "https://proj.org/schemas/v0.7/projjson.schema.json",
    "type": "GeographicCRS",
    "name": "WGS 84",
    "datum_ensemble": {
        "name": "World Geodetic System 1984 ensemble",
        "members": [{"name": f"World Geodetic System 1984 ({r})"} for r in _WGS84_REALIZATIONS],
        "ellipsoid": {"name": "WGS 84", "semi_major_axis": 6378137, "inverse_flattening": 298.257223563},
        "accuracy": "2.0",
        "id": {"authority": "EPSG", "code": 6326},
    },
    "coordinate_system": {
        "subtype": "ellipsoidal",
        "axis": [
            {"name": "Geodetic latitude", "abbreviation": "Lat", "direction": "north", "unit": "degree"},
            {"name": "Geodetic longitude", "abbreviation": "Lon", "direction": "east", "unit": "degree"},
        ],
    },
    "scope": "Horizontal component of 3D system.",
    "area": "World.",
    "bbox": {"south_latitude": -90, "west_longitude": -180, "north_latitude": 90, "east_longitude": 180},
    "id": {"authority": "EPSG", "code": 4326},
}


def geo_metadata(lon: np.ndarray, lat: np.ndarray) -> dict[str, Any]:
    """The ``geo`` metadata of one file of points; its ``bbox`` is the file's own extent
    (left out for a file without rows, as the specification allows)."""
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Point"],
        "crs": CRS_EPSG_4326,
        "covering": {BBOX: {c: [BBOX, c] for c in _CORNERS}},
    }
    if len(lon):
        column["bbox"] = [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())]
    return {"version": "1.1.0", "primary_column": GEOMETRY, "columns": {GEOMETRY: column}}


# ISO WKB of a 2D point, little-endian: byte order 1, geometry type 1 (Point), x, y
_WKB_POINT = np.dtype([("byte_order", "u1"), ("geometry_type", "<u4"), ("x", "<f8"), ("y", "<f8")])


def wkb_points(x: NDArray[np.float64], y: NDArray[np.float64]) -> pa.BinaryArray:
    """The WKB of each point, built as one buffer of 21-byte records: the bytes GEOS writes
    (``shapely.to_wkb(..., byte_order=1, flavor="iso")``; a test compares them) at a
    hundredth of the cost, with no geometry object per site."""
    records = np.empty(len(x), dtype=_WKB_POINT)
    records["byte_order"], records["geometry_type"], records["x"], records["y"] = 1, 1, x, y
    offsets = np.arange(len(x) + 1, dtype=np.int64) * _WKB_POINT.itemsize
    if offsets[-1] > np.iinfo(np.int32).max:  # a part holds far fewer rows than binary offsets allow
        raise InternalError(Code.E_INTERNAL, f"{len(x)} points exceed one WKB column's offsets")
    buffers = [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(records.tobytes())]
    return pa.Array.from_buffers(pa.binary(), len(x), buffers)


def with_points(table: pa.Table, lon: str = "lon_deg", lat: str = "lat_deg") -> tuple[pa.Table, dict[bytes, bytes]]:
    """``table`` with ``geometry`` (little-endian 2D WKB points) and ``bbox`` appended, and the
    file metadata carrying ``geo``. Both columns repeat ``lon``/``lat`` exactly."""
    x = table.column(lon).to_numpy().astype(np.float64, copy=False)
    y = table.column(lat).to_numpy().astype(np.float64, copy=False)
    bbox = pa.StructArray.from_arrays([x, y, x, y], fields=list(FIELDS[1].type))
    out = table.append_column(FIELDS[0], wkb_points(x, y)).append_column(FIELDS[1], bbox)
    meta = json.dumps(geo_metadata(x, y), separators=(",", ":"), allow_nan=False)
    return out, {b"geo": meta.encode()}
