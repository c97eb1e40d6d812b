"""realism: certify the shipped bundles on 1A stand-ins of several sizes, as a user would, and
record every grade, gate margin, price and merchant figure.

For each bundle (--realism-bundles, default: the B+ remediation and the B bundle) and size
(--realism-sizes; 31257 is the plain stand-in), `seg1b certify` runs the seeds
(--realism-seeds, default the required ones; sizes above --realism-one-seed-above run seed 42
alone, as `seg1b run`) on a LocalCluster of --realism-workers. The JSON holds, per bundle,
size and seed: the outcome, every gate's observed value, threshold and margin (bootstrap
bounds included), ``relocated_share`` beside each grade's least relocation, the merchant
figures, the plausibility figures, the wall seconds and peak RSS; it is written after every
size."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness import Bench, run_command
from seg1b_dask.chain.runner import BUNDLES
from seg1b_dask.grading import gates as grading
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.policies.bundle import load_bundle

TARGETS: dict[str, float] = {}
PLAIN = 31257  # the stand-in's own size: no --scale
FIDELITY = (
    "relocated_share",
    "merchant_retention_median",
    "merchant_retention_p10",
    "new_pair_share",
    "merchants_lost_home",
    "home_outlets_kept_share",
    "move_km_median",
    "move_km_p90",
    "new_pair_home_km_median",
    "new_pair_home_km_p90",
    "new_countries_median",
    "new_countries_p90",
    "new_countries_max",
    "merchants_over_new_country_limit",
)


def _seed_figures(card: dict[str, Any], bundle_dir: Path) -> dict[str, Any]:
    """One seed's scorecard, reduced to what a reader of the benchmark compares."""
    gates = load_bundle(bundle_dir, refdata_version()).gates
    bootstrap = card.get("bootstrap_upper_95") or None
    rows = {
        level: [
            {k: r[k] for k in ("gate", "observed", "threshold", "margin", "passed")}
            for r in grading.gate_table(card, gates, level, bootstrap if level == "B_PLUS" else None)
        ]
        for level in grading.LEVELS
    }
    return {
        "outcome": card["grade_single_seed"]["outcome"],
        "sealed": card.get("sealed"),
        "sites": card["metrics"]["sites"],
        "gates": rows,
        "price": card.get("price"),
        "fidelity": {k: card.get("fidelity", {}).get(k) for k in FIDELITY},
        "plausibility": card.get("plausibility"),
        "sentinel_flagged": card["metrics"]["sentinel_flagged"],
        "nn_ratio": card["metrics"]["nn_ratio"],
        "near_city_share": card["metrics"]["near_city_share"],
    }


def options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--realism-sizes", default=f"{PLAIN},1000000,10000000", help="sites (31257: the stand-in)")
    group.add_argument("--realism-bundles", default="remediation,remediation_b", help="shipped bundles")
    group.add_argument("--realism-seeds", default="42,7,101,202")
    group.add_argument("--realism-one-seed-above", type=int, default=2_000_000, help="sizes above: seed 42 alone")
    group.add_argument("--realism-workers", type=int, default=2, help="workers of `seg1b certify`'s LocalCluster")


def _plan(args: argparse.Namespace) -> list[tuple[str, int, list[int]]]:
    """(bundle, size, seeds) in the order they run."""
    seeds = [int(s) for s in args.realism_seeds.split(",")]
    return [
        (name, size, seeds[:1] if size > args.realism_one_seed_above else seeds)
        for name in args.realism_bundles.split(",")
        for size in (int(s) for s in args.realism_sizes.split(","))
    ]


def steps(args: argparse.Namespace) -> int:
    return len(_plan(args))


def certify(root: Path, bundle_dir: Path, size: int, seeds: list[int], workers: int) -> dict[str, Any]:
    """``seg1b certify`` (or ``seg1b run`` for one seed) at one size; its pack's figures."""
    scale = [] if size == PLAIN else ["--scale", str(size)]
    if len(seeds) == 1:
        cmd = ["seg1b", "run", "--root", str(root), "--policies", str(bundle_dir), "--seed", str(seeds[0]), *scale]
    else:
        cmd = ["seg1b", "certify", "--root", str(root), "--policies", str(bundle_dir), "--workers", str(workers)]
        cmd += ["--seeds", ",".join(map(str, seeds)), *scale]
    done = run_command([sys.executable, "-m", "seg1b_dask.cli", *cmd[1:], "--quiet"], check=False)
    if done.returncode not in (0, 1):  # 1: a pack below its target, still a result
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    out: dict[str, Any] = {
        "command": " ".join(cmd),
        "exit_status": done.returncode,
        "wall_seconds": round(done.wall_seconds, 1),
        "peak_rss_mb_driver": done.peak_rss_mb_driver,
        "peak_rss_mb_worker": done.peak_rss_mb_worker,
    }
    if len(seeds) == 1:
        run = max((root / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
        card = json.loads((run / "scorecard" / "scorecard.json").read_text())
        out["outcome"] = card["grade_single_seed"]["outcome"]
        out["seeds"] = {str(seeds[0]): _seed_figures(card, bundle_dir)}
        return out
    pack = max((root / "certification").iterdir(), key=lambda p: p.stat().st_mtime)
    grade = json.loads((pack / "grade.json").read_text())
    out["outcome"] = grade["outcome"]
    out["cv"] = grade["cv"]
    out["seeds"] = {
        str(s): _seed_figures(json.loads((pack / "seeds" / f"seed={s}" / "scorecard.json").read_text()), bundle_dir)
        for s in seeds
    }
    return out


def run(bench: Bench) -> dict[str, Any]:
    """One top-level field per bundle: its results per size."""
    results: dict[str, Any] = {}
    for name, size, seeds in _plan(bench.args):
        with bench.progress.step(f"realism: {name} at {size:,} sites, seeds {seeds}"):
            root = bench.work / f"{name}-{size}"
            results.setdefault(name, {})[str(size)] = certify(
                root, BUNDLES / name, size, seeds, bench.args.realism_workers
            )
        bench.save(results)
    return results


def summary(fields: dict[str, Any]) -> list[str]:
    return [
        f"realism {name} at {int(size):,} sites: {r['outcome']} in {r['wall_seconds']} s"
        f" (exit {r['exit_status']}, seeds {', '.join(r['seeds'])})"
        for name, sizes in fields.items()
        for size, r in sizes.items()
    ]
