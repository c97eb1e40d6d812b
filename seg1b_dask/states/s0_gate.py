"""S0 gate: no PASS, no read. Verify the 1A bundle and its flag, validate the outlet
catalogue, seal every input and compute the run's lineage tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seg1b_dask import __version__
from seg1b_dask.engine.context import GateResult, StateContext
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io import refdata
from seg1b_dask.io.datasets import GATE_RECEIPT
from seg1b_dask.io.hashing import canonical_json, sha256_file, sha256_hex, verify_bundle
from seg1b_dask.io.upstream import CATALOGUE

REQUIRED = {
    "merchant_id": pa.uint64(),
    "home_country_iso": pa.string(),
    "legal_country_iso": pa.string(),
    "site_order": pa.int32(),
    "final_country_outlet_count": pa.int32(),
}


def validate_catalogue(table: pa.Table, known_iso: frozenset[str], path: Path) -> None:
    """Refuse a catalogue with a bad schema, unknown ISO code, count <= 0, duplicate key or
    a gap in ``site_order``; the error names the file and the first offending row."""
    if table.num_rows == 0:
        raise Seg1BError(Code.E_UPSTREAM_EMPTY, "the outlet catalogue has no rows: 1A placed no outlets", file=path)
    for name, dtype in REQUIRED.items():
        if name not in table.column_names:
            raise Seg1BError(Code.E_UPSTREAM_SCHEMA, "required column is missing", file=path, key=name)
        if not table.schema.field(name).type.equals(dtype):
            raise Seg1BError(
                Code.E_UPSTREAM_SCHEMA,
                f"column type is {table.schema.field(name).type}, expected {dtype}",
                file=path,
                key=name,
            )
        if table.column(name).null_count:
            row = int(np.flatnonzero(table.column(name).is_null().to_numpy(zero_copy_only=False))[0])
            raise Seg1BError(Code.E_UPSTREAM_SCHEMA, "null value", file=path, key=f"row {row}, column {name}")
    known = pa.array(sorted(known_iso), pa.string())
    for col in ("legal_country_iso", "home_country_iso"):
        unknown = np.flatnonzero(~pc.is_in(table.column(col), value_set=known).to_numpy(zero_copy_only=False))
        if len(unknown):
            row = int(unknown[0])
            value = table.column(col)[row].as_py()
            raise Seg1BError(
                Code.E_UNKNOWN_ISO, f"unknown ISO code {value!r}", file=path, key=f"row {row}, column {col}"
            )
    count = table.column("final_country_outlet_count").to_numpy()
    site_order = table.column("site_order").to_numpy()
    bad = np.flatnonzero((count <= 0) | (site_order <= 0))
    if len(bad):
        row = int(bad[0])
        col = "final_country_outlet_count" if count[row] <= 0 else "site_order"
        raise Seg1BError(
            Code.E_NONPOSITIVE_COUNT,
            f"{col} must be positive, got {min(count[row], site_order[row])}",
            file=path,
            key=f"row {row}",
        )
    merchant = table.column("merchant_id").to_numpy()
    country = pc.index_in(table.column("legal_country_iso"), value_set=known).to_numpy(zero_copy_only=False)
    order = np.lexsort((site_order, country, merchant))
    m, c, s, n = merchant[order], country[order], site_order[order], count[order]
    same_pair = (m[1:] == m[:-1]) & (c[1:] == c[:-1])
    dup = np.flatnonzero(same_pair & (s[1:] == s[:-1]))
    if len(dup):
        row = int(order[dup[0] + 1])
        raise Seg1BError(
            Code.E_DUPLICATE_KEY, "duplicate (merchant_id, legal_country_iso, site_order)", file=path, key=f"row {row}"
        )
    starts = np.flatnonzero(np.r_[True, ~same_pair])
    sizes = np.diff(np.r_[starts, len(m)])
    expected = np.arange(len(m)) - np.repeat(starts, sizes) + 1
    gap = np.flatnonzero((s != expected) | (n != np.repeat(sizes, sizes)))
    if len(gap):
        row = int(order[gap[0]])
        raise Seg1BError(
            Code.E_SITE_ORDER_GAP,
            "site_order must run 1..n within each (merchant, country) and n must equal final_country_outlet_count",
            file=path,
            key=f"row {row} (merchant_id {m[gap[0]]})",
        )
    homes = table.group_by("merchant_id").aggregate([("home_country_iso", "count_distinct")])
    many = np.flatnonzero(homes.column(1).to_numpy() > 1)
    if len(many):
        merchant_id = homes.column("merchant_id")[int(many[0])].as_py()
        raise Seg1BError(
            Code.E_UPSTREAM_SCHEMA,
            "a merchant has more than one home country",
            file=path,
            key=f"merchant_id {merchant_id}",
        )


def verify(
    upstream: Path, seed: int, parameter_hash: str, code_digest: str, baseline_nn_ratio: float | None = None
) -> GateResult:
    """Verify the 1A bundle and seal every input. A bundle that targets a grade is graded
    against the seed's pinned baseline, whose NN ratio is then a sealed input too: another
    baseline means another ``manifest_fingerprint``, never a conflicting republish."""
    index, flag = verify_bundle(upstream)
    if not isinstance(index.get("seed"), int) or index["seed"] != int(seed):
        raise Seg1BError(
            Code.E_TOKEN_MISMATCH,
            f"1A bundle is for seed {index.get('seed')}, run asks for seed {seed}",
            file=upstream / "index.json",
            key="seed",
        )
    path = upstream / CATALOGUE
    if not path.is_file():
        raise Seg1BError(Code.E_BUNDLE_INDEX, "the 1A bundle has no outlet catalogue", file=path, key=CATALOGUE)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise Seg1BError(
            Code.E_UPSTREAM_SCHEMA, f"the outlet catalogue is not readable Parquet ({exc})", file=path
        ) from None
    for token, expected in (("seed", seed), ("manifest_fingerprint", index.get("manifest_fingerprint"))):
        if token in table.column_names:
            values = set(table.column(token).to_pylist())
            if values != {expected}:
                raise Seg1BError(
                    Code.E_TOKEN_MISMATCH,
                    f"rows carry {token} values {sorted(map(str, values))[:3]}, bundle says {expected}",
                    file=path,
                    key=token,
                )
    validate_catalogue(table, refdata.known_iso_codes(), path)
    sealed = [{"name": "1A:_passed.flag", "sha256": flag}]
    sealed += [
        {"name": f"refdata:{p.name}", "sha256": sha256_file(p)} for p in sorted(refdata.REFDATA_DIR.glob("*.parquet"))
    ]
    sealed += [
        {"name": "parameter_hash", "sha256": parameter_hash},
        {"name": f"package:{__version__}", "sha256": code_digest},
    ]
    if baseline_nn_ratio is not None:
        sealed.append({"name": "baseline:nn_ratio", "sha256": sha256_hex(canonical_json(baseline_nn_ratio))})
    fingerprint = sha256_hex(canonical_json(sorted(d["sha256"] for d in sealed)))
    return GateResult(
        manifest_fingerprint=fingerprint, upstream_flag=flag, sealed_inputs=sealed, n_outlets=table.num_rows
    )


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    """Write the gate receipt: the sealed inputs behind this run's tokens."""
    gate = ctx.gate
    receipt = {
        "seed": ctx.seed,
        "parameter_hash": ctx.tokens.parameter_hash,
        "manifest_fingerprint": gate.manifest_fingerprint,
        "upstream_flag_sha256": gate.upstream_flag,
        "sealed_inputs": gate.sealed_inputs,
        "outlets": gate.n_outlets,
    }
    GATE_RECEIPT.write(out["s0_gate_receipt"], receipt)
    return {"outlets": gate.n_outlets}
