"""S8 egress: ``site_locations``, one folder per country (``country=XX``), rows in key order
(merchant_id, site_order) cut into parts of at most ``rows_per_part`` rows: the layout
depends only on the rows, never on how tasks were batched."""

from __future__ import annotations

from pathlib import Path

import dask

from seg1b_dask.engine.context import StateContext
from seg1b_dask.engine.execution import compute
from seg1b_dask.io.datasets import SITE_LOCATIONS, SITE_SYNTHESIS


def _batch_task(synthesis: Path, egress: Path, countries: list[str], rows_per_part: int) -> tuple[int, int]:
    rows = parts = 0
    for iso2 in countries:
        table = SITE_SYNTHESIS.read(synthesis, [iso2])  # already in key order
        parts += SITE_LOCATIONS.write(egress, iso2, table, rows_per_part)
        rows += table.num_rows
    return rows, parts


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    synthesis = ctx.inputs["s7_site_synthesis"]
    rows_per_part = ctx.policies.s8_egress.rows_per_part
    done = compute(
        [
            dask.delayed(_batch_task)(synthesis, out["site_locations"], b, rows_per_part)
            for b in ctx.execution.country_batches(SITE_SYNTHESIS.row_counts(synthesis))
        ]
    )
    return {"rows": sum(d[0] for d in done), "parts": sum(d[1] for d in done)}
