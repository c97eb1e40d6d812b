"""S3 requirements: per (merchant, country) the 1A outlet count, home country and the
merchant's total. Refuses countries on the denylist or without eligible tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seg1b_dask.engine.context import StateContext
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io.catalogue import pair_counts
from seg1b_dask.io.datasets import S3_REQUIREMENTS
from seg1b_dask.io.grids import TILE_GRID
from seg1b_dask.io.upstream import CATALOGUE


def requirements(pairs: pa.Table, denylist: frozenset[str], eligible: frozenset[str], path: Path) -> pa.Table:
    """One row per (merchant, legal country), sorted by merchant then country, from the
    outlets counted per pair."""
    pairs = pairs.sort_by([("merchant_id", "ascending"), ("legal_country_iso", "ascending")])
    countries = pairs.column("legal_country_iso")
    for code, bad, message in (
        (
            Code.E_DENYLISTED,
            pc.is_in(countries, pa.array(sorted(denylist), pa.string())),
            "1A places outlets in a denylisted country",
        ),
        (
            Code.E_INELIGIBLE_COUNTRY,
            pc.invert(pc.is_in(countries, pa.array(sorted(eligible), pa.string()))),
            "1A places outlets in a country with no eligible tiles",
        ),
    ):
        flagged = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
        if len(flagged):
            row = int(flagged[0])
            raise Seg1BError(
                code,
                message,
                file=path,
                key=f"merchant_id {pairs.column('merchant_id')[row].as_py()}, country {countries[row].as_py()}",
            )
    merchant = pairs.column("merchant_id").to_numpy()
    n_sites = pairs.column("n_sites").to_numpy().astype(np.int64)
    starts = np.flatnonzero(np.r_[True, merchant[1:] != merchant[:-1]])  # sorted by merchant
    merchant_total = np.repeat(np.add.reduceat(n_sites, starts), np.diff(np.r_[starts, len(merchant)]))
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
    tiles = TILE_GRID.countries(ctx.inputs["tile_grid"], ["iso2", "eligible"]).to_pydict()
    eligible = frozenset(i for i, e in zip(tiles["iso2"], tiles["eligible"], strict=True) if e)
    table = requirements(pair_counts(path), frozenset(ctx.policies.s3_requirements.denylist_iso), eligible, path)
    S3_REQUIREMENTS.write(out["s3_requirements"], table)
    return {
        "pairs": table.num_rows,
        "merchants": pc.count_distinct(table.column("merchant_id")).as_py(),
        "sites": int(pc.sum(table.column("n_sites")).as_py()),
    }
