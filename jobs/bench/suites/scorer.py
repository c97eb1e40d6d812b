"""scorer: the scorecard at 31 k and 1 M sites; nearest neighbours per latitude band (with a
halo) side by side with one global tree."""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

import numpy as np

from harness import Bench
from seg1b_dask.chain.runner import DEFAULT_POLICIES
from seg1b_dask.core import metrics
from seg1b_dask.core.grid import Grid
from seg1b_dask.grading.scoring import SiteFrame, compute_scorecard, load_sites
from seg1b_dask.io.grids import TILE_GRID
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.model.nearest import nearest_neighbour_km_chunked
from seg1b_dask.model.sentinel import grid_reference
from seg1b_dask.policies.bundle import load_bundle
from suites.common import scattered, seed42_remediation

TARGETS: dict[str, float] = {}


def options(group: argparse._ArgumentGroup) -> None:
    """No options of its own."""


def steps(args: argparse.Namespace) -> int:
    return 3


def run(bench: Bench) -> dict[str, Any]:
    with bench.progress.step("scorer: seed 42, remediation, 31 k sites"):
        result = seed42_remediation(bench.work / "scorer")
    bundle = load_bundle(DEFAULT_POLICIES, refdata_version())
    sites = load_sites(result.outputs["site_locations"])
    ct = TILE_GRID.countries(result.outputs["tile_grid"], ["iso2", "region", "eligible"]).to_pydict()
    region_of = dict(zip(ct["iso2"], ct["region"], strict=True))
    out = {}
    g = np.random.default_rng(0)
    for label, n in (("31k", len(sites.lon)), ("1M", 1_000_000)):
        if n == len(sites.lon):
            frame = sites
        else:  # 1 M sites around the real ones (same countries, 2 km scatter)
            pick, lon, lat = scattered(sites.lon, sites.lat, n, g)
            frame = SiteFrame(sites.merchant_id[pick], sites.iso2[pick], lon, lat)
        with bench.progress.step(f"scorer: scorecard and nearest neighbours at {n:,} sites"):
            t = time.perf_counter()
            reference = functools.partial(
                grid_reference,
                result.outputs["tile_grid"],
                result.outputs["tile_weights"],
                Grid(bundle.grid.resolution_arcsec),
            )
            compute_scorecard(frame, region_of, int(np.sum(ct["eligible"])), 10.0, bundle.gates, reference, 11)
            card_s = time.perf_counter() - t
            t = time.perf_counter()
            chunked = nearest_neighbour_km_chunked(frame.lon, frame.lat)
            chunked_s = time.perf_counter() - t
            t = time.perf_counter()
            whole = np.sort(metrics.nearest_neighbour_km(frame.lon, frame.lat))
            global_s = time.perf_counter() - t
        out[label] = {
            "sites": n,
            "scorecard_seconds": round(card_s, 3),
            "nn_chunked_seconds": round(chunked_s, 3),
            "nn_global_tree_seconds": round(global_s, 3),
            "nn_identical": bool(np.array_equal(chunked, whole)),
        }
    return {"scorer": out}


def summary(fields: dict[str, Any]) -> list[str]:
    return [
        f"scorer {label}: scorecard {r['scorecard_seconds']} s; NN chunked {r['nn_chunked_seconds']} s "
        f"vs global tree {r['nn_global_tree_seconds']} s (identical: {r['nn_identical']})"
        for label, r in fields["scorer"].items()
    ]
