"""certify: the certification lane (remediation bundle), 4 seeds interleaved on a LocalCluster,
against 4 x one seed in the fast lane; warm cache (S1/S2 and baselines present)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from harness import Bench, run_command
from seg1b_dask.chain.runner import DEFAULT_POLICIES, run_seed
from seg1b_dask.engine.execution import Execution
from seg1b_dask.lanes.certify import certify
from seg1b_dask.lanes.score import pin_baseline_run, score_run
from suites.common import drop_seeded

TARGETS: dict[str, float] = {"certify_4_seeds_s": 120}
SEEDS = [42, 7, 101, 202]


def options(group: argparse._ArgumentGroup) -> None:
    """No options of its own: --repeat."""


def steps(args: argparse.Namespace) -> int:
    return 1 + 3 * int(args.repeat)


def run(bench: Bench) -> dict[str, Any]:
    root = bench.work / "certify"
    policies = DEFAULT_POLICIES
    with bench.progress.step(f"certify: pin the baselines of seeds {SEEDS}"):  # warm: baselines pinned
        ratios = {seed: float(pin_baseline_run(root, seed, Execution())["nn_ratio"]) for seed in SEEDS}
    parallel, parallel_in_pack, sequential_cli, sequential_in_process = [], [], [], []
    for i in range(bench.args.repeat):
        of = f"({i + 1}/{bench.args.repeat})"
        drop_seeded(root)
        with bench.progress.step(f"certify: 4 seeds on a LocalCluster {of}"):
            t = time.perf_counter()
            pack = certify(root, SEEDS, policies, workers=2)
            parallel.append(time.perf_counter() - t)
        parallel_in_pack.append(pack.wall_seconds)
        # 4 x one seed as a user runs it: `seg1b run --seed S` one after the other.
        drop_seeded(root)
        with bench.progress.step(f"certify: 4 x `seg1b run` {of}"):
            t = time.perf_counter()
            for seed in SEEDS:
                cmd = [sys.executable, "-m", "seg1b_dask.cli", "run", "--seed", str(seed)]
                run_command([*cmd, "--policies", str(policies), "--root", str(root), "--quiet"])
            sequential_cli.append(time.perf_counter() - t)
        # The same four runs inside this already-warm process (no start-up at all).
        drop_seeded(root)
        with bench.progress.step(f"certify: 4 runs in this process {of}"):
            t = time.perf_counter()
            for seed in SEEDS:
                result = run_seed(
                    root=root, seed=seed, policies=policies, execution=Execution(), baseline_nn_ratio=ratios[seed]
                )
                score_run(root, result.run_dir)
            sequential_in_process.append(time.perf_counter() - t)
    med_p, med_cli, med_in = (
        statistics.median(parallel),
        statistics.median(sequential_cli),
        statistics.median(sequential_in_process),
    )
    return {
        "certification": {
            "seeds": SEEDS,
            "parallel_wall_seconds": [round(x, 3) for x in parallel],
            "parallel_wall_seconds_excluding_cluster_start": [round(x, 3) for x in parallel_in_pack],
            "sequential_cli_wall_seconds": [round(x, 3) for x in sequential_cli],
            "sequential_in_process_wall_seconds": [round(x, 3) for x in sequential_in_process],
            "parallel_median": round(med_p, 3),
            "sequential_cli_median": round(med_cli, 3),
            "sequential_in_process_median": round(med_in, 3),
            "ratio_parallel_over_sequential_cli": round(med_p / med_cli, 3),
            "ratio_parallel_over_sequential_in_process": round(med_p / med_in, 3),
            "target_ratio": 0.7,
        }
    }


def summary(fields: dict[str, Any]) -> list[str]:
    c = fields["certification"]
    return [
        f"certify 4 seeds: parallel {c['parallel_median']} s vs 4 x `seg1b run` {c['sequential_cli_median']} s "
        f"(ratio {c['ratio_parallel_over_sequential_cli']}); vs 4 runs in one warm process "
        f"{c['sequential_in_process_median']} s (ratio {c['ratio_parallel_over_sequential_in_process']})"
    ]
