"""The dataset layer: the one place that knows each dataset's files, layout and format.

States call these readers and writers and never build another state's paths. Site-level
Parquet datasets are partitioned by country (``country=XX/part-NNNNN.parquet``, rows in key
order inside), so a task reads and writes only its own countries and bytes never depend on
how countries are batched into tasks. Grids are CF-style xarray datasets in sharded Zarr v3
(``xarray.open_zarr`` opens them with ``lat``/``lon`` coordinates); site jitter is a
chunked array dataset over the ``site`` dimension.
"""

from __future__ import annotations

import errno
import functools
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import dask.array as da
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xarray as xr
import zarr
from numpy.typing import NDArray

from seg1b_dask.core.grid import Grid
from seg1b_dask.io import geoparquet
from seg1b_dask.io.lineage import replaced, write_json

PART = "part-{:05d}.parquet"
# Fixed writer options and no pandas metadata: the same rows always give the same bytes.
WRITE_OPTIONS: dict[str, Any] = dict(
    compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True, store_schema=False
)
_ZSTD = zarr.codecs.ZstdCodec(level=3)
# Consolidated metadata lets ``xarray.open_zarr`` open a store without a warning; zarr-python
# notes that it is not yet part of the v3 specification. A process-wide filter for that one
# message: ``warnings.catch_warnings`` is not thread-safe, and stores are written from the
# threads of every seed of a certification.
warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)


def _write_parquet(table: pa.Table, folder: Path, relative: str, metadata: dict[bytes, bytes] | None = None) -> None:
    """Write ``folder/relative`` whole, with ``metadata`` as its only key-value metadata (no
    stored schema writes none by itself). ``folder`` (a dataset being staged) must exist: a
    lost worker finishing late after the dataset was sealed and renamed fails here rather than
    recreate it."""
    if not folder.is_dir():
        raise FileNotFoundError(errno.ENOENT, "the dataset being written is gone", str(folder))
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced(path) as tmp, pq.ParquetWriter(tmp, table.schema.remove_metadata(), **WRITE_OPTIONS) as writer:
        writer.write_table(table)
        if metadata:
            writer.add_key_value_metadata(metadata)


@dataclass(frozen=True)
class Table:
    """A small Parquet table written whole (pair- or country-level, never one row per site)."""

    subdir: str = ""

    def write(self, folder: Path, table: pa.Table) -> None:
        _write_parquet(table, folder, f"{self.subdir}/{PART.format(0)}".lstrip("/"))

    def read(self, folder: Path, columns: list[str] | None = None) -> pa.Table:
        return pq.ParquetFile(folder / self.subdir / PART.format(0)).read(columns=columns)


@dataclass(frozen=True)
class Record:
    """One small JSON file written whole (S0's gate receipt); readers take its ``path``."""

    name: str

    def path(self, folder: Path) -> Path:
        return folder / self.name

    def write(self, folder: Path, payload: Mapping[str, Any]) -> None:
        write_json(self.path(folder), dict(payload))


@dataclass(frozen=True)
class CountryParts:
    """A site- or pair-level Parquet dataset with one folder per country; with ``points``,
    GeoParquet parts whose geometry each part derives from its own ``lon_deg``/``lat_deg``."""

    schema: pa.Schema
    subdir: str = ""
    points: bool = False

    def _country_dir(self, folder: Path, iso2: str) -> Path:
        return folder / self.subdir / f"country={iso2}"

    def write(self, folder: Path, iso2: str, table: pa.Table, rows_per_part: int | None = None) -> int:
        """Write one country's rows (already in key order); returns the number of parts."""
        given = pa.schema([f for f in self.schema if not (self.points and f.name in geoparquet.COLUMNS)])
        table = table.select(given.names).cast(given)
        step = rows_per_part or max(table.num_rows, 1)
        starts = range(0, max(table.num_rows, 1), step)
        for i, lo in enumerate(starts):
            part, metadata = table.slice(lo, step), None
            if self.points:
                part, metadata = geoparquet.with_points(part)
            _write_parquet(part, folder, (self._country_dir(Path(), iso2) / PART.format(i)).as_posix(), metadata)
        return len(starts)

    def countries(self, folder: Path) -> list[str]:
        base = folder / self.subdir
        names = os.listdir(base) if base.is_dir() else []
        return sorted(n.split("=", 1)[1] for n in names if n.startswith("country="))

    def files(self, folder: Path, countries: Iterable[str] | None = None) -> list[Path]:
        wanted = self.countries(folder) if countries is None else sorted(countries)
        out: list[Path] = []
        for iso2 in wanted:
            country = self._country_dir(folder, iso2)
            if country.is_dir():  # os.listdir: a glob per country costs more than the read
                out.extend(country / n for n in sorted(os.listdir(country)) if n.startswith("part-"))
        return out

    def read(self, folder: Path, countries: Iterable[str] | None = None, columns: list[str] | None = None) -> pa.Table:
        """Rows of the given countries (all by default), country by country in code order."""
        files = self.files(folder, countries)
        if not files:
            empty = self.schema.empty_table()
            return empty.select(columns) if columns else empty
        return pa.concat_tables([pq.ParquetFile(p).read(columns=columns) for p in files])

    def row_counts(self, folder: Path) -> dict[str, int]:
        """Rows per country from the Parquet footers (no data read)."""
        return {
            iso2: sum(pq.ParquetFile(p).metadata.num_rows for p in self.files(folder, [iso2]))
            for iso2 in self.countries(folder)
        }


# ---- site- and pair-level datasets -----------------------------------------------------

_MERCHANT = ("merchant_id", pa.uint64())
_COUNTRY = ("legal_country_iso", pa.string())
_ORDER = ("site_order", pa.int32())
_TILE = ("tile_id", pa.int64())
_LON_LAT = [("lon_deg", pa.float64()), ("lat_deg", pa.float64())]

GATE_RECEIPT = Record("gate_receipt.json")  # S0: the sealed inputs, the 1A flag among them
S3_REQUIREMENTS = Table()
COUNTRY_MASS = Table()
COUNTRY_PAIRS = CountryParts(pa.schema([_MERCHANT, _COUNTRY, ("n_sites", pa.int64())]), "pairs")  # S4(a)
ALLOC_PLAN = CountryParts(pa.schema([_MERCHANT, _COUNTRY, _TILE, ("n_sites", pa.int64())]), "tiles")  # S4(b)
SITE_LINEAGE = CountryParts(
    pa.schema([_MERCHANT, ("source_country_iso", pa.string()), ("source_site_order", pa.int32()), _COUNTRY, _ORDER])
)
SITE_TILE_ASSIGNMENT = CountryParts(pa.schema([_MERCHANT, _COUNTRY, _ORDER, _TILE]))
SITE_SYNTHESIS = CountryParts(
    pa.schema(
        [_MERCHANT, _COUNTRY, _ORDER, _TILE, *_LON_LAT, ("inside_tile", pa.bool_()), ("inside_country", pa.bool_())]
    )
)
# S8: GeoParquet 1.1 (WKB ``geometry`` and a ``bbox`` covering beside ``lon_deg``/``lat_deg``).
SITE_LOCATIONS = CountryParts(pa.schema([_MERCHANT, _COUNTRY, _ORDER, *_LON_LAT, *geoparquet.FIELDS]), points=True)


# ---- grids -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _open_published(path: str) -> zarr.Array:
    """A read-only handle on a published (write-once) array: opening reads its metadata
    through zarr's event loop, which costs more than a small window read, so each process
    opens each array once."""
    return zarr.open_array(path, mode="r")


@functools.lru_cache(maxsize=16)
def _published_table(folder: str) -> pa.Table:
    """A small published (write-once) table, read once per process (the chunk index is
    consulted for every country of a task)."""
    return Table().read(Path(folder))


def _coords(grid: Grid) -> dict[str, Any]:
    lat = grid.row_centre_lat(np.arange(grid.nrows))
    lon = -180.0 + (np.arange(grid.ncols) + 0.5) * grid.deg
    return {
        "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude", "axis": "Y"}),
        "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude", "axis": "X"}),
    }


def _create_grid_store(
    store: Path,
    grid: Grid,
    variables: Mapping[str, tuple[str, dict[str, Any]]],
    shard_rows: int,
    chunk_cols: int,
    attrs: dict[str, Any],
    extra: Mapping[str, tuple[tuple[str, ...], NDArray[Any], dict[str, Any]]] = {},
) -> None:
    """Write the metadata and coordinates of a lat × lon grid dataset; tasks then fill row
    bands of whole shards in place (Zarr region writes that never share a shard)."""
    lazy = {
        name: (("lat", "lon"), da.zeros((grid.nrows, grid.ncols), chunks=(shard_rows, grid.ncols), dtype=dtype), va)
        for name, (dtype, va) in variables.items()
    }
    ds = xr.Dataset({**lazy, **extra}, coords=_coords(grid), attrs={"Conventions": "CF-1.8", **attrs})
    encoding = {
        name: {
            "chunks": (shard_rows, min(chunk_cols, grid.ncols)),
            "shards": (shard_rows, grid.ncols),
            "compressors": _ZSTD,
            "fill_value": 0,
        }
        for name in variables
    }
    ds.to_zarr(store, mode="w", compute=False, zarr_format=3, consolidated=True, encoding=encoding)


@dataclass(frozen=True)
class TileGrid:
    """S1's grid: ``country_id`` (0 = sea) per cell, ``cell_area_m2`` per row, and the
    per-country tile table (cells, bounding rows/cols, eligibility)."""

    STORE = "tile_grid.zarr"
    COUNTRY = "country_id"
    AREA = "cell_area_m2"
    countries_table = Table("country_tiles")
    chunk_index = Table("country_chunks")

    def create(self, folder: Path, grid: Grid, shard_rows: int, chunk_cols: int, attrs: dict[str, Any]) -> None:
        area = ("lat",), grid.row_area_m2(), {"units": "m2", "long_name": "area of one cell of the row"}
        _create_grid_store(
            folder / self.STORE,
            grid,
            {self.COUNTRY: ("int16", {"long_name": "country id (0 = none)", "flag_values_table": "country_tiles"})},
            shard_rows,
            chunk_cols,
            attrs,
            {self.AREA: area},
        )

    def array(self, folder: Path, mode: str = "r") -> zarr.Array:
        path = str(folder / self.STORE / self.COUNTRY)
        return _open_published(path) if mode == "r" else zarr.open_array(path, mode=mode)

    def shard_rows(self, folder: Path) -> int:
        a = self.array(folder)
        return int((a.shards or a.chunks)[0])

    def write_band(self, folder: Path, row0: int, band: NDArray[np.int16]) -> None:
        self.array(folder, "r+")[row0 : row0 + band.shape[0], :] = band

    def read_band(self, folder: Path, row0: int, row1: int) -> tuple[NDArray[np.int16], NDArray[np.float64]]:
        area = _open_published(str(folder / self.STORE / self.AREA))
        return np.asarray(self.array(folder)[row0:row1, :]), np.asarray(area[row0:row1])

    def chunk_shape(self, folder: Path) -> tuple[int, int]:
        return tuple(int(v) for v in self.array(folder).chunks)  # type: ignore[return-value]

    def write_countries(self, folder: Path, table: pa.Table, chunks: pa.Table) -> None:
        """The per-country tile table and the chunk index: every inner Zarr chunk holding a
        country's cells, so a reader of one country decodes only those chunks."""
        self.countries_table.write(folder, table)
        self.chunk_index.write(folder, chunks)

    def _country_windows(self, folder: Path, country_id: int) -> list[tuple[slice, slice]]:
        """Grid windows holding every cell of one country, from the chunk index (never the
        country's bounding box): one over a compact country's chunks, else one per run of
        adjacent chunks in a chunk row."""
        chunk_rows, chunk_cols = self.chunk_shape(folder)
        index = _published_table(str(folder / self.chunk_index.subdir))
        mine = pc.equal(index.column("country_id"), country_id)
        rows = index.column("chunk_row").filter(mine).to_numpy()
        cols = index.column("chunk_col").filter(mine).to_numpy()
        ncols = int(self.array(folder).shape[1])
        if len(rows) and (np.ptp(rows) + 1) * (np.ptp(cols) + 1) <= 2 * len(rows):
            # A compact country: one window over its chunks' bounding box (fewer, larger reads).
            boxes = [(int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)]
        else:  # runs of adjacent chunks in one chunk row, one window each
            start = np.flatnonzero(np.r_[True, (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1] + 1)])
            end = np.r_[start[1:], len(rows)] - 1
            boxes = [
                (int(rows[a]), int(rows[a]) + 1, int(cols[a]), int(cols[b]) + 1)
                for a, b in zip(start, end, strict=True)
            ]
        return [
            (slice(r0 * chunk_rows, r1 * chunk_rows), slice(c0 * chunk_cols, min(c1 * chunk_cols, ncols)))
            for r0, r1, c0, c1 in boxes
        ]

    def country_cells(
        self, folder: Path, weights_folder: Path, country_id: int
    ) -> tuple[NDArray[np.int64], NDArray[np.uint64]]:
        """Tile ids (ascending) and weights of one country's cells with positive weight, read
        chunk by chunk from the index (never the country's bounding box)."""
        grid, weights = self.array(folder), TILE_WEIGHTS.array(weights_folder)
        ncols = int(grid.shape[1])
        ids, values = [], []
        for window in self._country_windows(folder, country_id):
            cid, weight = np.asarray(grid[window]), np.asarray(weights[window]).ravel()
            flat = np.flatnonzero(cid.ravel() == country_id)
            flat = flat[weight[flat] > 0]
            row, col = np.divmod(flat, cid.shape[1])
            ids.append((row + window[0].start) * ncols + col + window[1].start)
            values.append(weight[flat])
        if not ids:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
        tile_ids, weight = np.concatenate(ids), np.concatenate(values)
        if len(ids) > 1 and (np.diff(tile_ids) < 0).any():  # runs of one chunk row interleave by row
            order = np.argsort(tile_ids, kind="stable")
            tile_ids, weight = tile_ids[order], weight[order]
        return tile_ids.astype(np.int64, copy=False), weight.astype(np.uint64, copy=False)

    def country_tiles(self, folder: Path, country_id: int) -> NDArray[np.int64]:
        """Tile ids (ascending) of every cell of one country, whatever its weight."""
        grid = self.array(folder)
        ids = [np.zeros(0, dtype=np.int64)]
        for window in self._country_windows(folder, country_id):
            row, col = np.nonzero(np.asarray(grid[window]) == country_id)
            ids.append((row + window[0].start) * int(grid.shape[1]) + col + window[1].start)
        return np.sort(np.concatenate(ids)).astype(np.int64, copy=False)

    def countries(self, folder: Path, columns: list[str] | None = None) -> pa.Table:
        return self.countries_table.read(folder, columns)


@dataclass(frozen=True)
class TileWeights:
    """S2's fixed-point integer ``tile_weight`` per cell (exact sums, 0 = no mass)."""

    STORE = "tile_weights.zarr"
    WEIGHT = "tile_weight"

    def create(self, folder: Path, grid: Grid, shard_rows: int, chunk_cols: int, attrs: dict[str, Any]) -> None:
        _create_grid_store(
            folder / self.STORE,
            grid,
            {self.WEIGHT: ("uint64", {"long_name": "fixed-point tile weight", "units": attrs.get("unit", "1")})},
            shard_rows,
            chunk_cols,
            attrs,
        )

    def array(self, folder: Path, mode: str = "r") -> zarr.Array:
        path = str(folder / self.STORE / self.WEIGHT)
        return _open_published(path) if mode == "r" else zarr.open_array(path, mode=mode)

    def write_band(self, folder: Path, row0: int, band: NDArray[np.uint64]) -> None:
        self.array(folder, "r+")[row0 : row0 + band.shape[0], :] = band


@dataclass(frozen=True)
class SiteJitter:
    """S6's point per site as arrays over ``site`` in canonical order (country code, then
    merchant, then site_order), with a per-country index of [start, stop) positions."""

    STORE = "site_jitter.zarr"
    DTYPES: ClassVar[Mapping[str, Any]] = {
        "merchant_id": np.uint64,
        "country_id": np.int16,
        "site_order": np.int32,
        "tile_id": np.int64,
        "lon_deg": np.float64,
        "lat_deg": np.float64,
        "attempts": np.int16,
    }
    ARRAYS = tuple(DTYPES)
    CHUNK = 1 << 20
    index_table = Table("country_index")

    def write(self, folder: Path, pieces: list[Any], sizes: list[int], attrs: dict[str, Any]) -> Any:
        """Concatenate delayed per-batch column dicts into chunked Dask arrays; return the
        delayed store (rechunked to a fixed size, so bytes never depend on the batches)."""
        total = sum(sizes)
        chunk = min(self.CHUNK, max(total, 1))
        data = {}
        for name in self.ARRAYS:
            parts = [
                da.from_delayed(piece[name], shape=(n,), dtype=self.DTYPES[name])
                for piece, n in zip(pieces, sizes, strict=True)
                if n
            ]
            column = da.concatenate(parts) if parts else da.zeros((0,), dtype=self.DTYPES[name])
            data[name] = (("site",), column.rechunk(chunk))
        ds = xr.Dataset(data, attrs=attrs)
        encoding = {name: {"chunks": (chunk,), "compressors": _ZSTD} for name in self.ARRAYS}
        return ds.to_zarr(
            folder / self.STORE, mode="w", zarr_format=3, consolidated=True, encoding=encoding, compute=False
        )

    def write_index(self, folder: Path, iso2: list[str], sizes: list[int]) -> None:
        stop = np.cumsum(np.asarray(sizes, dtype=np.int64))
        self.index_table.write(
            folder, pa.table({"iso2": pa.array(iso2, pa.string()), "start": stop - sizes, "stop": stop})
        )

    def index(self, folder: Path) -> dict[str, tuple[int, int]]:
        t = self.index_table.read(folder).to_pydict()
        return {c: (a, b) for c, a, b in zip(t["iso2"], t["start"], t["stop"], strict=True)}

    def read(self, folder: Path, lo: int, hi: int) -> dict[str, NDArray[Any]]:
        group = zarr.open_group(str(folder / self.STORE), mode="r")
        return {name: np.asarray(group[name][lo:hi]) for name in self.ARRAYS}  # type: ignore[index]


TILE_GRID = TileGrid()
TILE_WEIGHTS = TileWeights()
SITE_JITTER = SiteJitter()
