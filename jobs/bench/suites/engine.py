"""engine: seed 42's full chain cold (empty cache) and warm (S1/S2 reused, S3..S9 recomputed),
for the baseline and the remediation bundle; medians over --repeat runs."""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path
from typing import Any

from harness import Bench
from seg1b_dask.chain.runner import BASELINE_POLICIES, DEFAULT_POLICIES
from seg1b_dask.lanes.score import pin_baseline_run
from suites.common import SEEDED_STATES, chain_run

TARGETS: dict[str, float] = {"warm_full_chain_s": 15, "warm_remediation_run_s": 10, "cold_full_chain_s": 60}


def options(group: argparse._ArgumentGroup) -> None:
    """No options of its own: --repeat and --scheduler."""


def steps(args: argparse.Namespace) -> int:
    return 1 + 2 * 2 * int(args.repeat)


def _median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "runs": len(runs),
        "wall_seconds_median": round(statistics.median(r["wall_seconds"] for r in runs), 3),
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
        "sealed": all(r["sealed"] for r in runs),
        "states": {},
    }
    for sid in runs[0]["states"]:
        out["states"][sid] = {
            "seconds_median": round(statistics.median(r["states"][sid]["seconds"] for r in runs), 3),
            "peak_rss_mb_max": max(r["states"][sid]["peak_rss_mb"] for r in runs),
            "reused": runs[0]["states"][sid]["reused"],
        }
    return out


def _cold_and_warm(bench: Bench, policies: Path, baseline_nn_ratio: float | None) -> dict[str, Any]:
    execution = bench.execution
    cold, warm = [], []
    for i in range(bench.args.repeat):
        root = bench.work / f"chain{i}"
        with bench.progress.step(f"engine: {policies.name} cold ({i + 1}/{bench.args.repeat})"):
            cold.append(chain_run(root, execution, policies, baseline_nn_ratio))
        # Warm: keep the seed-free cache (S1/S2) and the 1A bundle, drop everything seeded.
        shutil.rmtree(root / "runs", ignore_errors=True)
        for state in SEEDED_STATES:
            shutil.rmtree(root / "cache" / state, ignore_errors=True)
        for ds in (root / "data").iterdir():
            if ds.name not in ("tile_grid", "tile_weights", "country_mass"):
                shutil.rmtree(ds)
        with bench.progress.step(f"engine: {policies.name} warm ({i + 1}/{bench.args.repeat})"):
            warm.append(chain_run(root, execution, policies, baseline_nn_ratio))
        shutil.rmtree(root)
    return {"cold": _median_runs(cold), "warm": _median_runs(warm)}


def run(bench: Bench) -> dict[str, Any]:
    # The remediation grades contraction against the seed's pinned baseline: pin it once.
    with bench.progress.step("engine: pin seed 42's baseline"):
        ratio = float(pin_baseline_run(bench.work / "pin", 42, bench.execution)["nn_ratio"])
    return {
        "seed42_default_grid": {
            "baseline": _cold_and_warm(bench, BASELINE_POLICIES, None),
            "remediation": _cold_and_warm(bench, DEFAULT_POLICIES, ratio),
        }
    }


def summary(fields: dict[str, Any]) -> list[str]:
    lines = []
    for bundle, chain in fields["seed42_default_grid"].items():
        for phase in ("cold", "warm"):
            c = chain[phase]
            median, runs, peak = c["wall_seconds_median"], c["runs"], c["peak_rss_mb_max"]
            lines.append(f"{bundle} {phase} full chain: {median} s (median of {runs}), peak {peak} MiB")
    return lines
