"""The dataset layer: the one place that knows each dataset's files, layout and format.

States call these readers and writers and never build another state's paths. Site-level
Parquet datasets are partitioned by country (``country=XX/part-NNNNN.parquet``, rows in key
order inside), so a task reads and writes only its own countries and bytes never depend on
how countries are batched into tasks. Grids are CF-style xarray datasets in sharded Zarr v3
(``xarray.open_zarr`` opens them with ``lat``/``lon`` coordinates); site jitter is a
chunked array dataset over the ``site`` dimension (``io.grids``).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from seg1b_dask.io import geoparquet
from seg1b_dask.io.lineage import replaced, write_json

PART = "part-{:05d}.parquet"
# Fixed writer options and no pandas metadata: the same rows always give the same bytes.
# No dictionary pages: ids, coordinates and WKB points are nearly all distinct, so a
# dictionary is built and then abandoned page after page; plain pages under zstd write about
# twice as fast and come out smaller, for every dataset of the chain.
WRITE_OPTIONS: dict[str, Any] = dict(
    compression="zstd", compression_level=3, use_dictionary=False, write_statistics=True, store_schema=False
)


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


def read_batches(paths: Iterable[Path], columns: list[str], rows: int) -> Iterator[tuple[int, pa.Table]]:
    """Parquet files read ``rows`` rows at a time, one file after another, each non-empty batch
    with the number of rows before it: nobody holds a column of every row."""
    offset = 0
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=columns):
            if batch.num_rows:
                yield offset, pa.Table.from_batches([batch])
            offset += batch.num_rows


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
