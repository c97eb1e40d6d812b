"""Parquet I/O with deterministic bytes: fixed writer options, no pandas metadata."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WRITE_OPTIONS = dict(
    compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True, store_schema=False
)


def write_table(table: pa.Table, folder: Path, name: str = "part-00000.parquet") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    pq.write_table(table.replace_schema_metadata(None), path, **WRITE_OPTIONS)
    return path


def read_table(folder: Path, columns: list[str] | None = None, filters=None) -> pa.Table:
    """Read every part file of a dataset folder (never just the first)."""
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no part files in {folder}")
    return pa.concat_tables([pq.read_table(p, columns=columns, filters=filters) for p in parts])
