"""scale: the scaling curve: `seg1b run` on 1A stand-ins scaled to --scale-sites (31 k … 10 M),
per-state seconds, seconds per million sites, peak RSS of the driver and the largest worker;
also writes <out>-scale.png."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness import Bench, run_command
from seg1b_dask.chain.runner import DEFAULT_POLICIES
from seg1b_dask.io.upstream import write_bundle

TARGETS: dict[str, float] = {
    "scale_10m_whole_command_s": 600,
    "scale_10m_peak_rss_mb": 8192,
    "scale_seconds_per_million_10m_over_1m": 1.5,
}
SCALE_SITES = (31_000, 300_000, 1_000_000, 3_000_000, 10_000_000)


def options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--scale-sites", default=",".join(map(str, SCALE_SITES)), help="sites of the scale suite")


def _sizes(args: argparse.Namespace) -> list[int]:
    return [int(v) for v in args.scale_sites.split(",")]


def steps(args: argparse.Namespace) -> int:
    return len(_sizes(args))


def cli_run(root: Path, upstream: Path, policies: Path, scheduler: str, workers: int | None) -> dict[str, Any]:
    """``seg1b run`` exactly as a user runs it, in its own process: wall seconds, peak RSS of
    the driver and of the largest worker process, and every run's per-state seconds from the
    run receipts (the seed's baseline first when it was pinned by this command)."""
    cmd = [sys.executable, "-m", "seg1b_dask.cli", "run", "--seed", "42", "--upstream", str(upstream)]
    cmd += ["--root", str(root), "--policies", str(policies), "--quiet", "--scheduler", scheduler]
    cmd += ["--workers", str(workers)] if workers else []
    before = set((root / "runs").iterdir()) if (root / "runs").is_dir() else set()
    done = run_command(cmd)
    runs = []
    for run in sorted(set((root / "runs").iterdir()) - before):
        receipt = json.loads((run / "run.json").read_text())
        runs.append(
            {
                "bundle": receipt["policy_bundle"],
                "wall_seconds": receipt["wall_seconds"],
                "states": {s["id"]: round(s["seconds"], 3) for s in receipt["states"]},
                "sites": next(s["stats"].get("sites") for s in receipt["states"] if s["id"] == "S3"),
                "s6_mean_attempts": next(
                    (s["stats"].get("mean_attempts") for s in receipt["states"] if s["id"] == "S6"), None
                ),
            }
        )
    grade = next(
        (line.split(":", 1)[1].split()[0] for line in done.stdout.splitlines() if "single-seed grade:" in line), None
    )
    return {
        "grade": grade,
        "disk_bytes": sum(p.stat().st_size for p in root.rglob("*") if p.is_file()),
        "wall_seconds": done.wall_seconds,
        "peak_rss_mb_driver": done.peak_rss_mb_driver,
        "peak_rss_mb_worker": done.peak_rss_mb_worker,
        "runs": runs,
        "summary_tail": done.stdout.splitlines()[-2:],
    }


def run(bench: Bench) -> dict[str, Any]:
    """``seg1b run`` (remediation bundle, 5′ grid) on scaled 1A stand-ins (``seg1b upstream
    synth --scale N``), each size in a fresh run root, so every command pins the seed's
    baseline first (its seconds are reported apart) and then runs the candidate."""
    scheduler, workers = bench.args.scheduler, bench.args.workers
    points: list[dict[str, Any]] = []
    scale = {"scheduler": scheduler, "workers": workers, "points": points}
    for n in _sizes(bench.args):
        upstream = bench.work / f"upstream-{n}"
        root = bench.work / f"scale-{n}"
        with bench.progress.step(f"scale: `seg1b run` at {n:,} sites"):
            t = time.perf_counter()
            write_bundle(42, upstream, scale=n)
            synth_seconds = time.perf_counter() - t
            run = cli_run(root, upstream, DEFAULT_POLICIES, scheduler, workers)
        candidate = next(r for r in run["runs"] if r["bundle"] == "remediation")
        baseline = next((r for r in run["runs"] if r["bundle"] == "baseline"), None)
        sites = candidate["sites"]
        points.append(
            {
                "requested_sites": n,
                "sites": sites,
                "synth_seconds": round(synth_seconds, 3),
                "whole_command_seconds": run["wall_seconds"],
                "candidate_run_seconds": candidate["wall_seconds"],
                "baseline_run_seconds": baseline["wall_seconds"] if baseline else None,
                "candidate_seconds_per_million_sites": round(candidate["wall_seconds"] / sites * 1e6, 3),
                "whole_command_seconds_per_million_sites": round(run["wall_seconds"] / sites * 1e6, 3),
                "peak_rss_mb_driver": run["peak_rss_mb_driver"],
                "peak_rss_mb_worker": run["peak_rss_mb_worker"],
                "grade": run["grade"],
                "disk_bytes": run["disk_bytes"],
                "s6_mean_attempts": candidate["s6_mean_attempts"],
                "candidate_states": candidate["states"],
                "baseline_states": baseline["states"] if baseline else None,
            }
        )
        bench.save({"scale": scale})  # each point as soon as it is measured
        shutil.rmtree(root)
        shutil.rmtree(upstream)
    scale_plot(scale, bench.out.with_name(bench.out.stem + "-scale.png"))
    return {"scale": scale}


def scale_plot(scale: dict[str, Any], path: Path) -> None:
    """Seconds per state of both bundles' runs and peak RSS against sites (log-log), one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = scale["points"]
    sites = np.asarray([p["sites"] for p in points], dtype=float)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    where = f"{scale['scheduler']}" + (f", {scale['workers']} workers" if scale.get("workers") else "")
    for ax, bundle in zip(axes[:2], ("baseline", "candidate"), strict=True):
        runs = [p for p in points if p[f"{bundle}_states"]]
        x = np.asarray([p["sites"] for p in runs], dtype=float)
        if not runs:
            continue
        for state in runs[-1][f"{bundle}_states"]:
            ax.plot(x, [max(p[f"{bundle}_states"][state], 1e-2) for p in runs], marker="o", lw=1, label=state)
        total = [p[f"{bundle}_run_seconds"] for p in runs]
        ax.plot(x, total, marker="s", lw=2.5, color="k", label=f"{bundle} run")
        if bundle == "candidate":
            ax.plot(x, [p["whole_command_seconds"] for p in runs], ls="--", color="k", label="whole command")
        ax.plot(x, x / x[-1] * total[-1], ls=":", color="grey", label="∝ sites")
        name = "baseline (pinned first)" if bundle == "baseline" else "remediation"
        ax.set(xscale="log", yscale="log", xlabel="sites", ylabel="seconds", title=f"{name}, 5′ grid, {where}")
        ax.legend(fontsize=7, ncol=2)
    axes[2].plot(sites, [p["peak_rss_mb_driver"] / 1024 for p in points], marker="o", label="driver")
    if any(p["peak_rss_mb_worker"] for p in points):
        axes[2].plot(sites, [p["peak_rss_mb_worker"] / 1024 for p in points], marker="o", label="largest worker")
    axes[2].set(xscale="log", xlabel="sites", ylabel="peak RSS (GiB)", title="memory, whole command")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(fields: dict[str, Any]) -> list[str]:
    return [
        f"scale {p['sites']:>10,} sites: whole command {p['whole_command_seconds']:.1f} s "
        f"(candidate run {p['candidate_run_seconds']:.1f} s, {p['candidate_seconds_per_million_sites']:.1f}"
        f" s per M sites), peak RSS driver {p['peak_rss_mb_driver']:.0f} MiB"
        for p in fields["scale"]["points"]
    ]
