"""S3 requirements: per (merchant, country) the 1A outlet count, home country and the
merchant's total. Refuses countries on the denylist or without eligible tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..context import StateContext
from ..datasets import S3_REQUIREMENTS, TILE_GRID
from ..errors import Code, Seg1BError
from ..upstream import CATALOGUE


def requirements(catalogue: pa.Table, denylist: frozenset[str], eligible: frozenset[str], path: Path) -> pa.Table:
    """One row per (merchant, legal country), sorted by merchant then country."""
    pairs = catalogue.group_by(["merchant_id", "legal_country_iso", "home_country_iso"]).aggregate(
        [("site_order", "count")]
    )
    pairs = pairs.rename_columns(["merchant_id", "legal_country_iso", "home_country_iso", "n_sites"])
    pairs = pairs.sort_by([("merchant_id", "ascending"), ("legal_country_iso", "ascending")])
    countries = np.asarray(pairs.column("legal_country_iso").to_pylist(), dtype=object)
    for code, bad, message in (
        (Code.E_DENYLISTED, np.isin(countries, list(denylist)), "1A places outlets in a denylisted country"),
        (
            Code.E_INELIGIBLE_COUNTRY,
            ~np.isin(countries, list(eligible)),
            "1A places outlets in a country with no eligible tiles",
        ),
    ):
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise Seg1BError(
                code,
                message,
                file=path,
                key=f"merchant_id {pairs.column('merchant_id')[row].as_py()}, country {countries[row]}",
            )
    totals = pairs.group_by("merchant_id").aggregate([("n_sites", "sum")])
    lookup = dict(zip(totals.column(0).to_pylist(), totals.column(1).to_pylist(), strict=True))
    merchant_total = [lookup[m] for m in pairs.column("merchant_id").to_pylist()]
    return pa.table(
        {
            "merchant_id": pairs.column("merchant_id"),
            "legal_country_iso": pairs.column("legal_country_iso"),
            "home_country_iso": pairs.column("home_country_iso"),
            "n_sites": pc.cast(pairs.column("n_sites"), pa.int64()),
            "merchant_total": pa.array(merchant_total, pa.int64()),
        }
    )


def run(ctx: StateContext, out: dict[str, Path]) -> dict[str, object]:
    path = ctx.upstream_bundle / CATALOGUE
    catalogue = pq.read_table(path, columns=["merchant_id", "legal_country_iso", "home_country_iso", "site_order"])
    tiles = TILE_GRID.countries(ctx.inputs["tile_grid"], ["iso2", "eligible"]).to_pydict()
    eligible = frozenset(i for i, e in zip(tiles["iso2"], tiles["eligible"], strict=True) if e)
    table = requirements(catalogue, frozenset(ctx.policies.s3_requirements.denylist_iso), eligible, path)
    S3_REQUIREMENTS.write(out["s3_requirements"], table)
    return {
        "pairs": table.num_rows,
        "merchants": len(set(table.column("merchant_id").to_pylist())),
        "sites": int(pc.sum(table.column("n_sites")).as_py()),
    }
