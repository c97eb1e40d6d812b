"""S7 synthesis: join each site to its coordinates and prove it lies in its tile and in its
country. Fail-closed: a site outside either is a defect, not a warning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask
import numpy as np
import pyarrow as pa

from seg1b_dask.core.grid import Grid
from seg1b_dask.engine.context import StateContext
from seg1b_dask.engine.execution import compute
from seg1b_dask.errors import Code, InternalError, Seg1BError
from seg1b_dask.io.datasets import SITE_SYNTHESIS, SITE_TILE_ASSIGNMENT
from seg1b_dask.io.grids import SITE_JITTER
from seg1b_dask.model.containment import inside_country, inside_tile


def _batch_task(
    folders: dict[str, Path], countries: list[str], index: dict[str, tuple[int, int]], grid: Grid
) -> dict[str, Any]:
    """Synthesize a batch of countries; count sites outside their tile or country."""
    bad, first_bad = 0, None
    base = index[countries[0]][0]
    if any(index[a][1] != index[b][0] for a, b in zip(countries, countries[1:], strict=False)):
        raise InternalError(Code.E_INTERNAL, f"countries {countries[0]}…{countries[-1]} are not consecutive in S6")
    batch = SITE_JITTER.read(folders["jitter"], base, index[countries[-1]][1])
    for iso2 in countries:
        lo, hi = index[iso2]
        cols = {name: values[lo - base : hi - base] for name, values in batch.items()}
        assignment = SITE_TILE_ASSIGNMENT.read(folders["assignment"], [iso2])
        for name in ("merchant_id", "site_order", "tile_id"):
            if not np.array_equal(cols[name], assignment.column(name).to_numpy()):
                raise Seg1BError(
                    Code.E_VALIDATION_FAILED,
                    f"S6 jitter rows do not line up with the S5 assignment ({name})",
                    file=folders["jitter"],
                    key=f"country {iso2}",
                )
        lon, lat = cols["lon_deg"], cols["lat_deg"]
        in_tile = inside_tile(lon, lat, cols["tile_id"], grid)
        in_country = inside_country(lon, lat, cols["country_id"])
        table = pa.table(
            {
                "merchant_id": cols["merchant_id"],
                "legal_country_iso": pa.array([iso2] * len(lon), pa.string()),
                "site_order": cols["site_order"],
                "tile_id": cols["tile_id"],
                "lon_deg": lon,
                "lat_deg": lat,
                "inside_tile": in_tile,
                "inside_country": in_country,
            }
        )
        outside = np.flatnonzero(~(in_tile & in_country))
        if len(outside) and first_bad is None:
            i = int(outside[0])
            first_bad = f"merchant_id {cols['merchant_id'][i]}, {iso2}, site_order {cols['site_order'][i]}"
        bad += len(outside)
        SITE_SYNTHESIS.write(folders["synthesis"], iso2, table)
    return {"sites": sum(index[c][1] - index[c][0] for c in countries), "outside": bad, "first": first_bad}


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    folders = {
        "jitter": ctx.inputs["s6_site_jitter"],
        "assignment": ctx.inputs["s5_site_tile_assignment"],
        "synthesis": out["s7_site_synthesis"],
    }
    index = SITE_JITTER.index(folders["jitter"])
    done = compute(
        [
            dask.delayed(_batch_task)(folders, b, {c: index[c] for c in b}, ctx.grid)
            for b in ctx.execution.country_batches({c: hi - lo for c, (lo, hi) in index.items()})
        ]
    )
    outside = sum(d["outside"] for d in done)
    if outside:
        raise Seg1BError(
            Code.E_VALIDATION_FAILED,
            f"{outside} sites outside their tile or country",
            file=folders["jitter"],
            key=next(d["first"] for d in done if d["first"]),
        )
    return {"sites": sum(d["sites"] for d in done), "inside_tile": 1.0, "inside_country": 1.0}
