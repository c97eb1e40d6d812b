"""Benchmark: per-state wall seconds and peak RSS, written as JSON.

Scenarios (each in a fresh run root unless stated):
  * ``cold``  — seed 42, full chain, empty cache;
  * ``warm``  — seed 42 again, S1/S2 reused (S3..S9 recomputed from a fresh data root
    that shares only the seed-free datasets);
  * ``grid30`` — S1+S2 alone on the 30″ world grid (21,600 x 43,200 cells).

Usage::

    python jobs/benchmark.py --out bench/benchmark.json [--repeat 3] [--skip-grid30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

from seg1b_dask.execution import Execution
from seg1b_dask.policies import load_bundle
from seg1b_dask.refdata import refdata_version
from seg1b_dask.runner import DEFAULT_POLICIES, Chain, run_seed


class RssSampler:
    """Peak resident memory (this process plus children) per state, sampled every 20 ms."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.current = "setup"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _rss(self) -> float:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def _loop(self) -> None:
        while not self._stop.is_set():
            rss = self._rss()
            self.peaks[self.current] = max(self.peaks.get(self.current, 0.0), rss)
            time.sleep(0.02)

    def mark(self, state: str) -> None:
        self.current = state.split()[0]

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _chain_run(root: Path, execution: Execution) -> dict:
    with RssSampler() as rss:
        t = time.perf_counter()
        rss.mark("S0")
        result = run_seed(root=root, seed=42, execution=execution, on_state=rss.mark)
        wall = time.perf_counter() - t
    return {
        "wall_seconds": round(wall, 3),
        "peak_rss_mb": round(max(rss.peaks.values()), 1),
        "states": {s.id: {"seconds": round(s.seconds, 3), "reused": s.reused, "peak_rss_mb": round(rss.peaks.get(s.id, 0.0), 1)} for s in result.states},
    }


def _median_runs(runs: list[dict]) -> dict:
    out = {"runs": len(runs), "wall_seconds_median": round(statistics.median(r["wall_seconds"] for r in runs), 3),
           "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs), "states": {}}
    for sid in runs[0]["states"]:
        out["states"][sid] = {
            "seconds_median": round(statistics.median(r["states"][sid]["seconds"] for r in runs), 3),
            "peak_rss_mb_max": max(r["states"][sid]["peak_rss_mb"] for r in runs),
            "reused": runs[0]["states"][sid]["reused"],
        }
    return out


def bench_chain(work: Path, repeat: int, execution: Execution) -> dict:
    cold, warm = [], []
    for i in range(repeat):
        root = work / f"chain{i}"
        cold.append(_chain_run(root, execution))
        # Warm: keep the seed-free cache (S1/S2) and the 1A bundle, drop everything seeded.
        for sub in ("runs",):
            shutil.rmtree(root / sub, ignore_errors=True)
        for state in ("S3", "S4", "S5", "S6", "S7", "S8", "S9"):
            shutil.rmtree(root / "cache" / state, ignore_errors=True)
        for ds in (root / "data").iterdir():
            if ds.name not in ("tile_grid", "tile_weights", "country_mass"):
                shutil.rmtree(ds)
        warm.append(_chain_run(root, execution))
        shutil.rmtree(root)
    return {"cold": _median_runs(cold), "warm": _median_runs(warm)}


def bench_grid30(work: Path, execution: Execution) -> dict:
    policies = work / "policies" / "grid30"
    shutil.copytree(DEFAULT_POLICIES, policies)
    shutil.copy(DEFAULT_POLICIES.parent / "gates.yaml", policies.parent / "gates.yaml")
    grid = policies / "grid.yaml"
    grid.write_text(grid.read_text().replace("resolution_arcsec: 300", "resolution_arcsec: 30").replace("chunk_cols: 1080", "chunk_cols: 5400"))
    bundle = load_bundle(policies, refdata_version())
    chain = Chain(work / "grid30", 42, bundle, Path("."), execution)
    with RssSampler() as rss:
        t = time.perf_counter()
        records = chain.run_global(on_state=rss.mark)
        wall = time.perf_counter() - t
    size = sum(p.stat().st_size for p in (work / "grid30" / "data").rglob("*") if p.is_file())
    out = {
        "cells": 21600 * 43200,
        "wall_seconds": round(wall, 3),
        "peak_rss_mb": round(max(rss.peaks.values()), 1),
        "states": {r.id: {"seconds": round(r.seconds, 3), "peak_rss_mb": round(rss.peaks.get(r.id, 0.0), 1), "stats": r.stats} for r in records},
        "stored_mb": round(size / 2**20, 1),
    }
    shutil.rmtree(work / "grid30")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/benchmark.json"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scheduler", default="threads")
    parser.add_argument("--skip-grid30", action="store_true")
    args = parser.parse_args(argv)
    execution = Execution(scheduler=args.scheduler)
    work = Path(tempfile.mkdtemp(prefix="seg1b-bench-"))
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version()},
        "execution": execution.as_dict(),
        "targets": {"warm_full_chain_s": 15, "cold_full_chain_s": 60, "grid30_s1_s2_s": 600, "grid30_peak_rss_mb": 4096},
    }
    try:
        report["seed42_default_grid"] = bench_chain(work, args.repeat, execution)
        if not args.skip_grid30:
            report["grid30_s1_s2"] = bench_grid30(work, execution)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    chain = report["seed42_default_grid"]
    print(f"cold full chain: {chain['cold']['wall_seconds_median']} s (median of {chain['cold']['runs']}), peak {chain['cold']['peak_rss_mb_max']} MiB")
    print(f"warm full chain: {chain['warm']['wall_seconds_median']} s (median of {chain['warm']['runs']}), peak {chain['warm']['peak_rss_mb_max']} MiB")
    if "grid30_s1_s2" in report:
        g = report["grid30_s1_s2"]
        print(f"30\u2033 S1+S2: {g['wall_seconds']} s, peak {g['peak_rss_mb']} MiB, stored {g['stored_mb']} MiB")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
