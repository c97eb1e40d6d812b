"""S8 egress: ``site_locations`` as Parquet part files of a fixed row count, in key order
(merchant_id, legal_country_iso, site_order), so bytes never depend on task layout."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..context import StateContext
from ..tables import write_table

COLUMNS = ("merchant_id", "legal_country_iso", "site_order", "lon_deg", "lat_deg")


def egress_parts(synthesis: pa.Table, rows_per_part: int) -> list[pa.Table]:
    table = synthesis.select(list(COLUMNS)).sort_by([(c, "ascending") for c in COLUMNS[:3]])
    return [table.slice(lo, rows_per_part) for lo in range(0, max(table.num_rows, 1), rows_per_part)]


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    synthesis = pq.read_table(ctx.inputs["s7_site_synthesis"] / "part-00000.parquet")
    parts = egress_parts(synthesis, ctx.policies.s8_egress.rows_per_part)
    for i, part in enumerate(parts):
        write_table(part, out["site_locations"], f"part-{i:05d}.parquet")
    return {"rows": synthesis.num_rows, "parts": len(parts)}
