"""report: the HTML run report at 31 k sites, and its costly parts at 10 M sites."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness import Bench, RssSampler
from seg1b_dask.chain.runner import DEFAULT_POLICIES, run_seed
from seg1b_dask.engine.execution import Execution
from seg1b_dask.io.datasets import SITE_LOCATIONS
from seg1b_dask.lanes.score import pin_baseline_run, score_run
from seg1b_dask.report import figures, run_page
from suites.common import scattered

TARGETS: dict[str, float] = {}
SITES_10M = 10_000_000


def options(group: argparse._ArgumentGroup) -> None:
    """No options of its own."""


def steps(args: argparse.Namespace) -> int:
    return 3


def run(bench: Bench) -> dict[str, Any]:
    """The run report at 31 k sites (a real run beside its baseline), and its costly parts at
    10 M sites: reading lon/lat, the datashader map, the top moves over 10 M lineage rows."""
    root = bench.work / "report"
    with bench.progress.step("report: seed 42, baseline and remediation, 31 k sites"):
        ratio = float(pin_baseline_run(root, 42, Execution())["nn_ratio"])
        result = run_seed(root=root, seed=42, policies=DEFAULT_POLICIES, execution=Execution(), baseline_nn_ratio=ratio)
        score_run(root, result.run_dir)
    with bench.progress.step("report: the run report at 31 k sites, twice"):
        t = time.perf_counter()
        run_page.run_report(root, result.run_dir)
        first = time.perf_counter() - t
        t = time.perf_counter()
        run_page.run_report(root, result.run_dir)
        again = time.perf_counter() - t
    n = SITES_10M
    g = np.random.default_rng(0)
    sites = SITE_LOCATIONS.read(result.outputs["site_locations"], columns=["lon_deg", "lat_deg", "legal_country_iso"])
    pick, lon, lat = scattered(sites.column("lon_deg").to_numpy(), sites.column("lat_deg").to_numpy(), n, g)
    iso = sites.column("legal_country_iso").take(pa.array(pick))
    path = bench.work / "report-10m.parquet"
    pq.write_table(pa.table({"lon_deg": lon, "lat_deg": lat}), path)
    lineage = pa.table({"source_country_iso": iso.take(pa.array(g.permutation(n))), "legal_country_iso": iso})
    with bench.progress.step(f"report: its costly parts at {n:,} sites"), RssSampler() as rss:
        t = time.perf_counter()
        coords = pq.read_table(path)
        read_s = time.perf_counter() - t
        t = time.perf_counter()
        counts = figures.density_counts(coords.column("lon_deg").to_numpy(), coords.column("lat_deg").to_numpy())
        figures.map_figure([("10M", counts)] * 2)  # a candidate and a baseline panel
        map_s = time.perf_counter() - t
        t = time.perf_counter()
        run_page.flows([lineage], 15)
        moves_s = time.perf_counter() - t
    return {
        "report": {
            "run_31k_first_seconds": round(first, 3),
            "run_31k_again_seconds": round(again, 3),
            "sites_10m": {
                "read_lon_lat_seconds": round(read_s, 3),
                "map_two_panels_seconds": round(map_s, 3),
                "top_moves_seconds": round(moves_s, 3),
                "total_seconds": round(read_s + map_s + moves_s, 3),
                "peak_rss_mb": round(rss.peak, 1),
            },
        }
    }


def summary(fields: dict[str, Any]) -> list[str]:
    r = fields["report"]
    return [
        f"report at 31 k sites: {r['run_31k_first_seconds']} s (again {r['run_31k_again_seconds']} s); "
        f"10 M sites: {r['sites_10m']['total_seconds']} s, peak {r['sites_10m']['peak_rss_mb']} MiB"
    ]
