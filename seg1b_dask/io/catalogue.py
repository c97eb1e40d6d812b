"""Validation of 1A's outlet catalogue, streamed: the driver holds one batch of outlets and
pair-level summaries, never every outlet, whatever the catalogue's size.

Each batch is checked row by row (nulls, tokens, ISO codes, positive counts) and summed up
per (merchant, country) piece: rows, lowest and highest ``site_order``,
``final_country_outlet_count`` and home country. A pair held whole by one batch is exact
from its piece. A pair whose pieces are ranges that neither overlap nor leave a hole is
exact too. Any other pair (a failing one, one with a repeated key, or one scattered over
batches) is read again, its rows only, and checked row by row, so a repeated key, a gap or
two homes are named as a whole-table check names them, at any batch size. Row-by-row faults
are raised by the first batch that holds one."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray

from seg1b_dask.core.rng import country_code_int, country_code_str
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io.datasets import read_batches

REQUIRED = {
    "merchant_id": pa.uint64(),
    "home_country_iso": pa.string(),
    "legal_country_iso": pa.string(),
    "site_order": pa.int32(),
    "final_country_outlet_count": pa.int32(),
}
BATCH_OUTLETS = 1_000_000  # catalogue rows read at a time: the driver holds pairs, never every outlet
PAIR_KEYS = ["merchant_id", "legal_country_iso", "home_country_iso"]


class _Columns:
    """A dataclass of equal-length arrays: rows taken, parts joined."""

    def take(self, keep: NDArray[np.int64] | NDArray[np.bool_]) -> Self:
        return type(self)(*(getattr(self, f.name)[keep] for f in fields(self)))  # type: ignore[arg-type]

    @classmethod
    def concat(cls, parts: list[Self]) -> Self:
        columns = fields(cls)  # type: ignore[arg-type]
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in columns))


@dataclass
class Rows(_Columns):
    """Catalogue rows as arrays: countries as indices into the sorted known codes, ``row``
    the row's index in the file."""

    merchant: NDArray[np.uint64]
    country: NDArray[np.int64]
    home: NDArray[np.int64]
    site_order: NDArray[np.int64]
    count: NDArray[np.int64]
    row: NDArray[np.int64]


@dataclass
class Closed(_Columns):
    """Pairs whole and exact inside one batch: only their key, home and first row are kept."""

    merchant: NDArray[np.uint64]
    country: NDArray[np.int16]
    home: NDArray[np.int16]
    row: NDArray[np.int64]  # the pair's first row in the file


@dataclass
class Pieces(_Columns):
    """Per (merchant, country) and batch, for pairs not whole in the batch: rows, lowest and
    highest site_order, lowest and highest outlet count and home, first row."""

    merchant: NDArray[np.uint64]
    country: NDArray[np.int64]
    rows: NDArray[np.int64]
    first: NDArray[np.int64]
    last: NDArray[np.int64]
    count_lo: NDArray[np.int64]
    count_hi: NDArray[np.int64]
    home_lo: NDArray[np.int64]
    home_hi: NDArray[np.int64]
    row: NDArray[np.int64]  # the piece's first row in the file


def _first_true(mask: NDArray[np.bool_]) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def check_schema(schema: pa.Schema, path: Path) -> None:
    for name, dtype in REQUIRED.items():
        if name not in schema.names:
            raise Seg1BError(Code.E_UPSTREAM_SCHEMA, "required column is missing", file=path, key=name)
        if not schema.field(name).type.equals(dtype):
            raise Seg1BError(
                Code.E_UPSTREAM_SCHEMA,
                f"column type is {schema.field(name).type}, expected {dtype}",
                file=path,
                key=name,
            )


def batch_rows(batch: pa.Table, offset: int, known: pa.Array, tokens: dict[str, object], path: Path) -> Rows:
    """One batch checked row by row (``offset``: rows before it in the file)."""
    for name in REQUIRED:
        row = _first_true(batch.column(name).is_null().to_numpy(zero_copy_only=False))
        if row is not None:
            raise Seg1BError(Code.E_UPSTREAM_SCHEMA, "null value", file=path, key=f"row {offset + row}, column {name}")
    for token, expected in tokens.items():
        values = set(pc.unique(batch.column(token)).to_pylist())
        if values != {expected}:
            raise Seg1BError(
                Code.E_TOKEN_MISMATCH,
                f"rows carry {token} values {sorted(map(str, values))[:3]}, bundle says {expected}",
                file=path,
                key=token,
            )
    codes = {}
    for col in ("legal_country_iso", "home_country_iso"):
        index = pc.index_in(batch.column(col), value_set=known)
        row = _first_true(index.is_null().to_numpy(zero_copy_only=False))
        if row is not None:
            value = batch.column(col)[row].as_py()
            raise Seg1BError(
                Code.E_UNKNOWN_ISO, f"unknown ISO code {value!r}", file=path, key=f"row {offset + row}, column {col}"
            )
        codes[col] = index.to_numpy(zero_copy_only=False).astype(np.int64)
    count = batch.column("final_country_outlet_count").to_numpy().astype(np.int64)
    site_order = batch.column("site_order").to_numpy().astype(np.int64)
    row = _first_true((count <= 0) | (site_order <= 0))
    if row is not None:
        col = "final_country_outlet_count" if count[row] <= 0 else "site_order"
        raise Seg1BError(
            Code.E_NONPOSITIVE_COUNT,
            f"{col} must be positive, got {min(count[row], site_order[row])}",
            file=path,
            key=f"row {offset + row}",
        )
    return Rows(
        batch.column("merchant_id").to_numpy(),
        codes["legal_country_iso"],
        codes["home_country_iso"],
        site_order,
        count,
        np.arange(offset, offset + batch.num_rows, dtype=np.int64),
    )


def _sorted_runs(rows: Rows) -> tuple[Rows, NDArray[np.bool_], NDArray[np.int64]]:
    """Rows sorted by (merchant, country, site_order) (stable: file order among equals), which
    rows repeat the key of the row before, and where each pair's run starts."""
    rows = rows.take(np.lexsort((rows.site_order, rows.country, rows.merchant)))
    same_pair = (rows.merchant[1:] == rows.merchant[:-1]) & (rows.country[1:] == rows.country[:-1])
    repeat = np.r_[False, same_pair & (rows.site_order[1:] == rows.site_order[:-1])]
    return rows, repeat, np.flatnonzero(np.r_[True, ~same_pair])


def pieces(rows: Rows) -> tuple[Closed, Pieces]:
    """A batch's rows summed up per (merchant, country): the pairs it holds whole and exact,
    and the pieces of the others (a piece with a repeated key is marked ``first = 0``, so it
    is read again and named there, by the same rule at any batch size)."""
    rows, repeat, starts = _sorted_runs(rows)  # a batch is never empty
    ends = np.r_[starts[1:], len(rows.merchant)] - 1
    p = Pieces(
        rows.merchant[starts],
        rows.country[starts],
        np.diff(np.r_[starts, len(rows.merchant)]),
        np.where(np.logical_or.reduceat(repeat, starts), 0, rows.site_order[starts]),
        rows.site_order[ends],
        np.minimum.reduceat(rows.count, starts),
        np.maximum.reduceat(rows.count, starts),
        np.minimum.reduceat(rows.home, starts),
        np.maximum.reduceat(rows.home, starts),
        np.minimum.reduceat(rows.row, starts),
    )
    whole = (p.first == 1) & (p.last == p.rows) & (p.count_lo == p.rows) & (p.count_hi == p.rows)
    whole &= p.home_lo == p.home_hi
    closed = Closed(
        p.merchant[whole], p.country[whole].astype(np.int16), p.home_lo[whole].astype(np.int16), p.row[whole]
    )
    return closed, p.take(~whole)


def _open_pairs_exact(p: Pieces) -> NDArray[np.bool_]:
    """Per pair of ``p`` (sorted by merchant, country, first): whether its pieces are ranges
    that continue each other from 1 to its outlet count."""
    if not len(p.merchant):
        return np.zeros(0, dtype=bool)
    new_pair = np.r_[True, (p.merchant[1:] != p.merchant[:-1]) | (p.country[1:] != p.country[:-1])]
    starts = np.flatnonzero(new_pair)
    rows = np.add.reduceat(p.rows, starts)
    high = np.maximum.reduceat(p.last, starts)
    count_lo, count_hi = np.minimum.reduceat(p.count_lo, starts), np.maximum.reduceat(p.count_hi, starts)
    gapless = p.last - p.first + 1 == p.rows
    follows = new_pair | (p.first == np.r_[0, p.last[:-1]] + 1)
    pieces_ok = np.logical_and.reduceat(gapless & follows, starts)
    exact = pieces_ok & (p.first[starts] == 1) & (high == count_lo) & (count_lo == count_hi) & (rows == count_lo)
    return np.repeat(exact, np.diff(np.r_[starts, len(p.merchant)]))


def suspect_merchants(closed: Closed, open_: Pieces) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """The merchants whose pairs the summaries cannot prove exact (to be read again row by
    row: a pair closed in one batch and seen again, or open pieces that do not tile 1..n),
    and the merchants with more than one home country, in the order they first appear."""
    n_closed = len(closed.merchant)
    merchant = np.r_[closed.merchant, open_.merchant]
    country = np.r_[closed.country.astype(np.int64), open_.country]
    order = np.lexsort((np.r_[np.zeros(n_closed, np.int64), open_.first], country, merchant))
    merchant, country = merchant[order], country[order]
    same = (merchant[1:] == merchant[:-1]) & (country[1:] == country[:-1])
    repeated = np.r_[same, False] | np.r_[False, same]
    is_closed = order < n_closed
    bad = repeated & is_closed
    opened = np.flatnonzero(~is_closed)
    open_sorted = open_.take(order[opened] - n_closed)
    bad[opened] |= ~_open_pairs_exact(open_sorted)
    home_lo = np.r_[closed.home.astype(np.int64), open_.home_lo][order]
    home_hi = np.r_[closed.home.astype(np.int64), open_.home_hi][order]
    by_merchant = np.flatnonzero(np.r_[True, merchant[1:] != merchant[:-1]])
    two_homes = np.minimum.reduceat(home_lo, by_merchant) != np.maximum.reduceat(home_hi, by_merchant)
    first_row = np.minimum.reduceat(np.r_[closed.row, open_.row][order], by_merchant)
    many = np.flatnonzero(two_homes)
    return np.unique(merchant[bad]), merchant[by_merchant][many[np.argsort(first_row[many])]]


def check_rows(rows: Rows, path: Path) -> None:
    """The exact row-by-row check of whole pairs: no repeated key, site_order running 1..n
    with n equal to final_country_outlet_count."""
    rows, repeat, starts = _sorted_runs(rows)
    dup = _first_true(repeat)
    if dup is not None:
        raise Seg1BError(
            Code.E_DUPLICATE_KEY,
            "duplicate (merchant_id, legal_country_iso, site_order)",
            file=path,
            key=f"row {rows.row[dup]}",
        )
    sizes = np.diff(np.r_[starts, len(rows.merchant)])
    expected = np.arange(len(rows.merchant)) - np.repeat(starts, sizes) + 1
    gap = _first_true((rows.site_order != expected) | (rows.count != np.repeat(sizes, sizes)))
    if gap is not None:
        raise Seg1BError(
            Code.E_SITE_ORDER_GAP,
            "site_order must run 1..n within each (merchant, country) and n must equal final_country_outlet_count",
            file=path,
            key=f"row {rows.row[gap]} (merchant_id {rows.merchant[gap]})",
        )


def validate_catalogue(
    path: Path, known_iso: frozenset[str], tokens: dict[str, object], batch_outlets: int = BATCH_OUTLETS
) -> int:
    """Refuse a catalogue with a bad schema, a null, an unknown ISO code, a count <= 0, a
    token other than the bundle's, a duplicate key, a gap in ``site_order`` or a merchant
    with two home countries; the error names the file and the first offending row. Returns
    the number of outlets."""
    try:
        meta = pq.ParquetFile(path)
        schema = meta.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise Seg1BError(
            Code.E_UPSTREAM_SCHEMA, f"the outlet catalogue is not readable Parquet ({exc})", file=path
        ) from None
    if meta.metadata.num_rows == 0:
        raise Seg1BError(Code.E_UPSTREAM_EMPTY, "the outlet catalogue has no rows: 1A placed no outlets", file=path)
    check_schema(schema, path)
    tokens = {k: v for k, v in tokens.items() if k in schema.names}
    known = pa.array(sorted(known_iso), pa.string())
    columns = [*REQUIRED, *tokens]
    closed, open_ = [], []
    try:
        for offset, batch in read_batches([path], columns, batch_outlets):
            whole, partial = pieces(batch_rows(batch, offset, known, tokens, path))
            closed.append(whole)
            open_.append(partial)
    except (pa.ArrowException, OSError) as exc:
        raise Seg1BError(Code.E_UPSTREAM_SCHEMA, f"the outlet catalogue is not readable ({exc})", file=path) from None
    suspects, many_homes = suspect_merchants(Closed.concat(closed), Pieces.concat(open_))
    del closed, open_
    if len(suspects):
        wanted = pa.array(suspects, pa.uint64())
        again = []
        for offset, batch in read_batches([path], columns, batch_outlets):
            rows = batch_rows(batch, offset, known, tokens, path)
            again.append(rows.take(pc.is_in(batch.column("merchant_id"), value_set=wanted).to_numpy(False)))
        check_rows(Rows.concat(again), path)
    if len(many_homes):
        raise Seg1BError(
            Code.E_UPSTREAM_SCHEMA,
            "a merchant has more than one home country",
            file=path,
            key=f"merchant_id {int(many_homes[0])}",
        )
    return int(meta.metadata.num_rows)


def iso_codes(column: pa.ChunkedArray) -> NDArray[np.str_]:
    """A column of two-letter codes as a numpy array, by way of its few distinct values: no
    Python string per row."""
    encoded = column.combine_chunks().dictionary_encode()
    names = np.asarray(encoded.dictionary.to_pylist(), dtype="U2")
    return names[encoded.indices.to_numpy(zero_copy_only=False)] if len(names) else np.zeros(0, "U2")


def _code_column(column: pa.ChunkedArray) -> NDArray[np.uint64]:
    """Two-letter codes as integers (``rng.country_code_int``)."""
    return country_code_int(iso_codes(column))


def _sum_by_pair(
    merchant: NDArray[np.uint64], legal: NDArray[np.uint64], home: NDArray[np.uint64], n: NDArray[np.int64]
) -> tuple[NDArray[np.uint64], NDArray[np.uint64], NDArray[np.uint64], NDArray[np.int64]]:
    order = np.lexsort((home, legal, merchant))
    merchant, legal, home, n = merchant[order], legal[order], home[order], n[order]
    if not len(merchant):
        return merchant, legal, home, n
    first = np.flatnonzero(
        np.r_[True, (merchant[1:] != merchant[:-1]) | (legal[1:] != legal[:-1]) | (home[1:] != home[:-1])]
    )
    return merchant[first], legal[first], home[first], np.add.reduceat(n, first)


def pair_counts(path: Path, batch_outlets: int = BATCH_OUTLETS) -> pa.Table:
    """Outlets per (merchant, legal country, home), sorted by them, the catalogue read
    ``batch_outlets`` rows at a time whatever its row groups: each batch is counted by pair,
    then the batches' counts are summed by pair (countries as 16-bit codes meanwhile)."""
    parts = []
    for _, batch in read_batches([path], PAIR_KEYS, batch_outlets):
        merchant = batch.column("merchant_id").to_numpy()
        legal, home = _code_column(batch.column("legal_country_iso")), _code_column(batch.column("home_country_iso"))
        parts.append(_sum_by_pair(merchant, legal, home, np.ones(len(merchant), dtype=np.int64)))
    if not parts:
        parts.append((np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64)))
    merchant, legal, home, n = _sum_by_pair(*(np.concatenate([p[i] for p in parts]) for i in range(4)))
    del parts
    return pa.table(
        {
            "merchant_id": pa.array(merchant, pa.uint64()),
            "legal_country_iso": _code_names(legal),
            "home_country_iso": _code_names(home),
            "n_sites": pa.array(n, pa.int64()),
        }
    )


def _code_names(codes: NDArray[np.uint64]) -> pa.Array:
    distinct, index = np.unique(codes, return_inverse=True)
    return pa.array(country_code_str(distinct).tolist(), pa.string()).take(pa.array(index))
