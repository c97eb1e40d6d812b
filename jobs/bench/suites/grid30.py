"""grid30: the 30″ world grid (21,600 x 43,200 cells), both bundles: S1+S2 cold, the full chain
at 31 k sites with S1/S2 warm, and the remediation at --grid30-sites."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from harness import Bench, RssSampler
from seg1b_dask.chain.runner import BASELINE_POLICIES, DEFAULT_POLICIES, Chain
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.io.upstream import write_bundle
from seg1b_dask.policies.bundle import load_bundle
from suites.common import chain_run

TARGETS: dict[str, float] = {
    "grid30_s1_s2_s": 600,
    "grid30_peak_rss_mb": 4096,
    "grid30_full_chain_warm_31k_s": 30,
    "grid30_full_chain_warm_1m_s": 300,
}


def options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--grid30-sites", type=int, default=1_000_000, help="large run at 30″ (0: none)")


def steps(args: argparse.Namespace) -> int:
    return 4 + (1 if args.grid30_sites else 0)


def _grid30_policies(work: Path, source: Path) -> Path:
    policies = work / "policies" / f"grid30-{source.name}"
    shutil.copytree(source, policies)
    shutil.copy(source.parent / "gates.yaml", policies.parent / "gates.yaml")
    grid = policies / "grid.yaml"
    grid.write_text(grid.read_text().replace("resolution_arcsec: 300", "resolution_arcsec: 30"))
    return policies


def run(bench: Bench) -> dict[str, Any]:
    """Both bundles on the 30″ grid: S1+S2 cold, then the full chain at 31 k sites with S1/S2
    warm (the remediation graded against the 30″ baseline's NN ratio), then — with
    ``--grid30-sites`` — the remediation's full chain on a scaled 1A."""
    work, execution, large_sites = bench.work, bench.execution, bench.args.grid30_sites
    out: dict[str, Any] = {"cells": 21600 * 43200}
    ratio = None
    for source in (BASELINE_POLICIES, DEFAULT_POLICIES):
        policies = _grid30_policies(work, source)
        root = work / f"grid30-{source.name}"
        chain = Chain(RunRoot.open(root), 42, load_bundle(policies, refdata_version()), Path("."), execution)
        with bench.progress.step(f"grid30: {source.name} S1+S2 cold"), RssSampler() as rss:
            t = time.perf_counter()
            records = chain.run_global(on_state=rss.mark)
            wall = time.perf_counter() - t
        size = sum(p.stat().st_size for p in (root / "data").rglob("*") if p.is_file())
        with bench.progress.step(f"grid30: {source.name} full chain at 31 k sites, S1/S2 warm"):
            warm = chain_run(root, execution, policies, ratio)
        entry = {
            "s1_s2_cold": {
                "wall_seconds": round(wall, 3),
                "peak_rss_mb": round(rss.peak, 1),
                "states": {r.id: {"seconds": round(r.seconds, 3), "stats": r.stats} for r in records},
                "stored_mb": round(size / 2**20, 1),
            },
            "full_chain_warm_31k": warm,
        }
        if source == BASELINE_POLICIES:
            ratio = float(warm["nn_ratio"])
        elif large_sites:
            upstream = work / f"upstream-grid30-{large_sites}"
            with bench.progress.step(f"grid30: {source.name} full chain at {large_sites:,} sites, S1/S2 warm"):
                write_bundle(42, upstream, scale=large_sites)
                entry[f"full_chain_warm_{large_sites}"] = chain_run(root, execution, policies, ratio, upstream)
            shutil.rmtree(upstream)
        out[source.name] = entry
        shutil.rmtree(root)
    return {"grid30": out}


def summary(fields: dict[str, Any]) -> list[str]:
    lines = []
    for bundle, g in fields["grid30"].items():
        if not isinstance(g, dict):
            continue
        cold, warm = g["s1_s2_cold"], g["full_chain_warm_31k"]
        lines.append(
            f"{bundle} at 30″: S1+S2 cold {cold['wall_seconds']} s (peak {cold['peak_rss_mb']} MiB, "
            f"{cold['stored_mb']} MiB stored); full chain, S1/S2 warm, {warm['sites']:,} sites: "
            f"{warm['wall_seconds']} s"
        )
        for key, run in g.items():
            if key.startswith("full_chain_warm_") and key != "full_chain_warm_31k":
                lines.append(
                    f"{bundle} at 30″, {run['sites']:,} sites: {run['wall_seconds']} s, peak {run['peak_rss_mb']} MiB"
                )
    return lines
