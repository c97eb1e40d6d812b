"""The grid datasets: S1's tile grid, S2's tile weights (CF-style xarray datasets in sharded
Zarr v3, opened by ``xarray.open_zarr`` with ``lat``/``lon`` coordinates) and S5's site
jitter (a chunked array over the ``site`` dimension). Tasks fill whole shards in place."""

from __future__ import annotations

import functools
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import dask.array as da
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xarray as xr
import zarr
from numpy.typing import NDArray

from seg1b_dask.core.grid import Grid
from seg1b_dask.io.datasets import Table

_ZSTD = zarr.codecs.ZstdCodec(level=3)
# Consolidated metadata lets ``xarray.open_zarr`` open a store without a warning; zarr-python
# notes that it is not yet part of the v3 specification. A process-wide filter for that one
# message: ``warnings.catch_warnings`` is not thread-safe, and stores are written from the
# threads of every seed of a certification.
warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)


class _CellsCache:
    """Country cells by (grid, weights, country), least recently used first out, bounded in
    bytes (a 300″ grid's every country fits; a 30″ grid's largest ones alone)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str, int], tuple[NDArray[np.int64], NDArray[np.uint64]]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, int]) -> tuple[NDArray[np.int64], NDArray[np.uint64]] | None:
        with self._lock:
            cells = self._entries.get(key)
            if cells is not None:
                self._entries.move_to_end(key)
            return cells

    def put(
        self, key: tuple[str, str, int], cells: tuple[NDArray[np.int64], NDArray[np.uint64]]
    ) -> tuple[NDArray[np.int64], NDArray[np.uint64]]:
        for array in cells:
            array.flags.writeable = False  # shared by every later reader
        size = sum(a.nbytes for a in cells)
        with self._lock:
            if size <= self.max_bytes and key not in self._entries:
                self._entries[key] = cells
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, dropped = self._entries.popitem(last=False)
                    self._bytes -= sum(a.nbytes for a in dropped)
        return cells


_CELLS = _CellsCache(256 * 2**20)


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
        chunk by chunk from the index (never the country's bounding box). Published grids are
        write-once: S4, S6 and S9 of a run read the same countries, so each process keeps the
        latest it read (``_CELLS``, read-only arrays)."""
        key = (str(folder), str(weights_folder), int(country_id))
        cells = _CELLS.get(key)
        if cells is None:
            cells = _CELLS.put(key, self._read_country_cells(folder, weights_folder, country_id))
        return cells

    def _read_country_cells(
        self, folder: Path, weights_folder: Path, country_id: int
    ) -> tuple[NDArray[np.int64], NDArray[np.uint64]]:
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
