"""strong: one seed of --strong-sites on a local cluster of 1 then 2 workers: the speed-up, and
the bytes are the same."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from harness import Bench, RssSampler
from seg1b_dask.chain.runner import DEFAULT_POLICIES, Chain, run_seed
from seg1b_dask.engine.execution import Execution
from seg1b_dask.io.lineage import read_manifest
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.io.upstream import write_bundle
from seg1b_dask.lanes.score import pin_baseline_run
from seg1b_dask.policies.bundle import load_bundle
from suites.common import drop_seeded

TARGETS: dict[str, float] = {}
WORKERS = (1, 2)


def options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--strong-sites", type=int, default=3_000_000, help="sites of the strong-scaling seed")


def steps(args: argparse.Namespace) -> int:
    return 1 + len(WORKERS)


def run(bench: Bench) -> dict[str, Any]:
    """Remediation, warm S1/S2 and a pinned baseline, so only the candidate's chain is timed."""
    n = bench.args.strong_sites
    upstream = bench.work / f"upstream-strong-{n}"
    root = bench.work / "strong"
    with bench.progress.step(f"strong: a {n:,}-site stand-in and its pinned baseline"):
        write_bundle(42, upstream, scale=n)
        ratio = float(pin_baseline_run(root, 42, Execution(), upstream=upstream)["nn_ratio"])
        bundle = load_bundle(DEFAULT_POLICIES, refdata_version())
        Chain(RunRoot.open(root), 42, bundle, Path("."), Execution()).run_global()  # the candidate's S1/S2, warm
    out: dict[str, Any] = {"sites_requested": n}
    digests = {}
    for workers in WORKERS:
        drop_seeded(root)
        execution = Execution(scheduler="distributed", workers=workers)
        with bench.progress.step(f"strong: {workers} worker(s)"), RssSampler() as rss:
            t = time.perf_counter()
            result = run_seed(
                root=root, seed=42, policies=DEFAULT_POLICIES, upstream=upstream, execution=execution,
                on_state=rss.mark, baseline_nn_ratio=ratio,
            )  # fmt: skip
            wall = time.perf_counter() - t
        digests[workers] = {k: read_manifest(p)["content_sha256"] for k, p in result.outputs.items()}
        out[f"workers_{workers}"] = {
            "wall_seconds": round(wall, 3),
            "states": {s.id: round(s.seconds, 3) for s in result.states},
            "peak_rss_mb_all_processes": round(rss.peak, 1),
        }
    out["sites"] = result.validation["metrics"]["sites"]
    out["speedup_2_over_1"] = round(out["workers_1"]["wall_seconds"] / out["workers_2"]["wall_seconds"], 3)
    out["identical_outputs"] = digests[1] == digests[2]
    shutil.rmtree(root)
    return {"strong_scaling": out}


def summary(fields: dict[str, Any]) -> list[str]:
    st = fields["strong_scaling"]
    return [
        f"strong scaling, {st['sites']:,} sites: 1 worker {st['workers_1']['wall_seconds']} s, 2 workers "
        f"{st['workers_2']['wall_seconds']} s, speed-up {st['speedup_2_over_1']} "
        f"(identical: {st['identical_outputs']})"
    ]
