"""Realism at every scale, as a benchmark: certify the shipped bundles on 1A stand-ins of
several sizes and write every grade, gate margin, price and merchant figure as JSON.

For each bundle (``--bundles``, default: the B+ remediation and the B bundle) and size
(``--sizes``; 31257 is the plain stand-in), ``seg1b certify`` runs the seeds (``--seeds``,
default the required ones; sizes above ``--one-seed-above`` run seed 42 alone, as
``seg1b run``), exactly as a user would, on a LocalCluster of ``--workers``. The JSON holds,
per bundle, size and seed: the outcome, every gate's observed value, threshold and margin
(bootstrap bounds included), ``relocated_share`` beside each grade's least relocation, the
merchant figures, the plausibility figures and the wall seconds.

Usage::

    python jobs/realism.py --out bench/realism.json
    python jobs/realism.py --out bench/realism-10m.json --sizes 10000000 --bundles remediation
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from seg1b_dask.chain.runner import BUNDLES
from seg1b_dask.grading import gates as grading
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.policies.bundle import load_bundle

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


def certify(root: Path, bundle_dir: Path, size: int, seeds: list[int], workers: int) -> dict[str, Any]:
    """``seg1b certify`` (or ``seg1b run`` for one seed) at one size; its pack's figures."""
    scale = [] if size == PLAIN else ["--scale", str(size)]
    started = time.perf_counter()
    if len(seeds) == 1:
        cmd = ["seg1b", "run", "--root", str(root), "--policies", str(bundle_dir), "--seed", str(seeds[0]), *scale]
    else:
        cmd = ["seg1b", "certify", "--root", str(root), "--policies", str(bundle_dir), "--workers", str(workers)]
        cmd += ["--seeds", ",".join(map(str, seeds)), *scale]
    done = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: a pack below its target, still a result
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    out: dict[str, Any] = {"command": " ".join(cmd), "exit_status": done.returncode, "wall_seconds": round(wall, 1)}
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", default=f"{PLAIN},1000000,10000000")
    parser.add_argument("--bundles", default="remediation,remediation_b")
    parser.add_argument("--seeds", default="42,7,101,202")
    parser.add_argument("--one-seed-above", type=int, default=2_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="run roots (default: a temporary folder)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="seg1b-realism-") as tmp:
        work = args.work or Path(tmp)
        for name in args.bundles.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                these = seeds[:1] if size > args.one_seed_above else seeds
                print(f"{name} at {size:,} sites, seeds {these}", file=sys.stderr, flush=True)
                root = work / f"{name}-{size}"
                results.setdefault(name, {})[str(size)] = certify(root, BUNDLES / name, size, these, args.workers)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
