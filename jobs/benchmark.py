"""Benchmark: per-state wall seconds and peak RSS, written as JSON.

Suites (``--suite``; default: engine, grid30, scorer, certify, report, memory):
  * ``engine``  — seed 42 full chain cold (empty cache) and warm (S1/S2 reused, S3..S9
    recomputed), for the baseline and the remediation bundle; medians over ``--repeat`` runs;
  * ``grid30``  — the 30″ world grid (21,600 x 43,200 cells), both bundles: S1+S2 cold, the
    full chain at 31 k sites with S1/S2 warm, and the remediation at ``--grid30-sites``;
  * ``scorer``  — the scorecard at 31 k and 1 M sites, nearest neighbours per latitude
    band with a halo side by side with one global tree;
  * ``report``  — the HTML report at 31 k sites, and its costly parts at 10 M sites;
  * ``memory``  — driver peak RSS of S4-S9 at 31 k and 1 M sites with one country mix (seed
    42's merchants copied 32 times), baseline bundle, S1/S2 warm;
  * ``certify`` — the certification lane (remediation bundle), 4 seeds interleaved on a
    LocalCluster, against 4 x one seed in the fast lane, warm cache (S1/S2 and baselines
    present);
  * ``scale``   — the scaling curve: ``seg1b run`` on 1A stand-ins scaled to ``--scale-sites``
    (31 k … 10 M), per-state seconds, seconds per million sites, peak RSS of the driver and
    the largest worker; also writes ``<out>-scale.png``;
  * ``strong``  — one seed of ``--strong-sites`` on a local cluster of 1 then 2 workers.

Usage::

    python jobs/benchmark.py --out bench/benchmark.json [--repeat 3] [--suite engine,scorer]
    python jobs/benchmark.py --out bench/scale.json --suite scale,strong
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from seg1b_dask.chain.runner import BASELINE_POLICIES, DEFAULT_POLICIES, Chain, run_seed
from seg1b_dask.core import metrics
from seg1b_dask.core.grid import Grid
from seg1b_dask.engine.execution import Execution
from seg1b_dask.io.datasets import SITE_LOCATIONS
from seg1b_dask.io.grids import TILE_GRID
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.lanes.certify import certify
from seg1b_dask.lanes.score import pin_baseline_run, score_run
from seg1b_dask.model.nearest import nearest_neighbour_km_chunked
from seg1b_dask.policies.bundle import load_bundle


class RssSampler:
    """Peak resident memory (this process plus children) per state, sampled every 20 ms."""

    def __init__(self, children: bool = True) -> None:
        self.children = children
        self.proc = psutil.Process()
        self.current = "setup"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _rss(self) -> float:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True) if self.children else ():
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
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


def _chain_run(
    root: Path, execution: Execution, policies: Path, baseline_nn_ratio: float | None, upstream: Path | None = None
) -> dict:
    """Seed 42's chain in this process: wall seconds, peak RSS per state, what was reused."""
    with RssSampler() as rss:
        t = time.perf_counter()
        rss.mark("S0")
        result = run_seed(
            root=root,
            seed=42,
            policies=policies,
            upstream=upstream,
            execution=execution,
            on_state=rss.mark,
            baseline_nn_ratio=baseline_nn_ratio,
        )
        wall = time.perf_counter() - t
    return {
        "sites": result.validation["metrics"]["sites"],
        "nn_ratio": result.validation["metrics"].get("nn_ratio"),
        "wall_seconds": round(wall, 3),
        "peak_rss_mb": round(max(rss.peaks.values()), 1),
        "sealed": bool(result.validation.get("sealed", True)),
        "states": {
            s.id: {
                "seconds": round(s.seconds, 3),
                "reused": s.reused,
                "peak_rss_mb": round(rss.peaks.get(s.id, 0.0), 1),
            }
            for s in result.states
        },
    }


def _median_runs(runs: list[dict]) -> dict:
    out = {
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


def bench_chain(work: Path, repeat: int, execution: Execution, policies: Path, baseline_nn_ratio: float | None) -> dict:
    cold, warm = [], []
    for i in range(repeat):
        root = work / f"chain{i}"
        cold.append(_chain_run(root, execution, policies, baseline_nn_ratio))
        # Warm: keep the seed-free cache (S1/S2) and the 1A bundle, drop everything seeded.
        for sub in ("runs",):
            shutil.rmtree(root / sub, ignore_errors=True)
        for state in ("S3", "S4", "S5", "S6", "S7", "S8", "S9"):
            shutil.rmtree(root / "cache" / state, ignore_errors=True)
        for ds in (root / "data").iterdir():
            if ds.name not in ("tile_grid", "tile_weights", "country_mass"):
                shutil.rmtree(ds)
        warm.append(_chain_run(root, execution, policies, baseline_nn_ratio))
        shutil.rmtree(root)
    return {"cold": _median_runs(cold), "warm": _median_runs(warm)}


def _grid30_policies(work: Path, source: Path) -> Path:
    policies = work / "policies" / f"grid30-{source.name}"
    shutil.copytree(source, policies)
    shutil.copy(source.parent / "gates.yaml", policies.parent / "gates.yaml")
    grid = policies / "grid.yaml"
    grid.write_text(grid.read_text().replace("resolution_arcsec: 300", "resolution_arcsec: 30"))
    return policies


def bench_grid30(work: Path, execution: Execution, large_sites: int | None) -> dict:
    """The 30″ world grid (21,600 x 43,200 cells), both bundles: S1+S2 cold, then the full
    chain at 31 k sites with S1/S2 warm (the remediation graded against the 30″ baseline's
    NN ratio), then — with ``large_sites`` — the remediation's full chain on a scaled 1A."""
    from seg1b_dask.io.upstream import write_bundle

    out: dict = {"cells": 21600 * 43200}
    ratio = None
    for source in (BASELINE_POLICIES, DEFAULT_POLICIES):
        policies = _grid30_policies(work, source)
        root = work / f"grid30-{source.name}"
        chain = Chain(RunRoot.open(root), 42, load_bundle(policies, refdata_version()), Path("."), execution)
        with RssSampler() as rss:
            t = time.perf_counter()
            records = chain.run_global(on_state=rss.mark)
            wall = time.perf_counter() - t
        size = sum(p.stat().st_size for p in (root / "data").rglob("*") if p.is_file())
        entry = {
            "s1_s2_cold": {
                "wall_seconds": round(wall, 3),
                "peak_rss_mb": round(max(rss.peaks.values()), 1),
                "states": {r.id: {"seconds": round(r.seconds, 3), "stats": r.stats} for r in records},
                "stored_mb": round(size / 2**20, 1),
            },
            "full_chain_warm_31k": _chain_run(root, execution, policies, ratio),
        }
        if source == BASELINE_POLICIES:
            ratio = float(entry["full_chain_warm_31k"]["nn_ratio"])
        elif large_sites:
            upstream = work / f"upstream-grid30-{large_sites}"
            write_bundle(42, upstream, scale=large_sites)
            entry[f"full_chain_warm_{large_sites}"] = _chain_run(root, execution, policies, ratio, upstream)
            shutil.rmtree(upstream)
        out[source.name] = entry
        shutil.rmtree(root)
    return out


def _drop_seeded(root: Path) -> None:
    """Keep S1/S2, baselines and the 1A bundles; forget every seeded result of candidates."""
    keep = set()
    for pointer in RunRoot(root).pin_files():
        keep.add(json.loads(pointer.read_text())["run_id"])
    for run in list((root / "runs").iterdir()):
        if run.name not in keep:
            shutil.rmtree(run)
    for state in ("S3", "S4", "S5", "S6", "S7", "S8", "S9"):
        for entry in (root / "cache" / state).glob("*.json"):
            keep_entry = any(k[-8:] in entry.read_text() for k in keep)
            if not keep_entry:
                entry.unlink()
    shutil.rmtree(root / "certification", ignore_errors=True)


def bench_certify(work: Path, repeat: int) -> dict:
    root = work / "certify"
    seeds = [42, 7, 101, 202]
    policies = DEFAULT_POLICIES
    ratios = {
        seed: float(pin_baseline_run(root, seed, Execution())["nn_ratio"]) for seed in seeds
    }  # warm: baselines pinned
    parallel, parallel_in_pack, sequential_cli, sequential_in_process = [], [], [], []
    for _ in range(repeat):
        _drop_seeded(root)
        t = time.perf_counter()
        pack = certify(root, seeds, policies, workers=2)
        parallel.append(time.perf_counter() - t)
        parallel_in_pack.append(pack.wall_seconds)
        # 4 x one seed as a user runs it: `seg1b run --seed S` one after the other.
        _drop_seeded(root)
        t = time.perf_counter()
        for seed in seeds:
            cmd = [
                sys.executable,
                "-m",
                "seg1b_dask.cli",
                "run",
                "--seed",
                str(seed),
                "--policies",
                str(policies),
                "--root",
                str(root),
                "--quiet",
            ]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        sequential_cli.append(time.perf_counter() - t)
        # The same four runs inside this already-warm process (no start-up at all).
        _drop_seeded(root)
        t = time.perf_counter()
        for seed in seeds:
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
        "seeds": seeds,
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


def bench_scorer(work: Path) -> dict:
    from seg1b_dask.grading.scoring import compute_scorecard, load_sites
    from seg1b_dask.model.sentinel import grid_reference

    root = work / "scorer"
    result = run_seed(root=root, seed=42, policies=DEFAULT_POLICIES, execution=Execution(), baseline_nn_ratio=10.0)
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
            pick = g.integers(0, len(sites.lon), n)
            from seg1b_dask.grading.scoring import SiteFrame

            frame = SiteFrame(
                sites.merchant_id[pick],
                sites.iso2[pick],
                sites.lon[pick] + g.normal(0, 0.02, n),
                np.clip(sites.lat[pick] + g.normal(0, 0.02, n), -90, 90),
            )
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
    return out


def replicated_bundle(seed: int, copies: int, out: Path) -> Path:
    """Seed ``seed``'s 1A stand-in with every merchant copied ``copies`` times under new ids:
    the same country mix at ``copies`` times the sites (a memory probe, not a realistic 1A)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from seg1b_dask.io.hashing import seal_bundle
    from seg1b_dask.io.upstream import CANDIDATES, CATALOGUE, write_bundle

    source = out.parent / f"{out.name}-source"
    write_bundle(seed, source)
    for rel in (CATALOGUE, CANDIDATES):
        table = pq.read_table(source / rel)
        step = int(pc.max(table.column("merchant_id")).as_py()) + 1
        parts = [
            table.set_column(0, "merchant_id", pc.add(table.column("merchant_id"), pa.scalar(k * step, pa.uint64())))
            for k in range(copies)
        ]
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(parts), out / rel, compression="zstd", store_schema=False)
    shutil.rmtree(source)
    seal_bundle(out, {"segment": "1A", "seed": seed, "manifest_fingerprint": f"x{copies}"})
    return out


SCALE_SITES = (31_000, 300_000, 1_000_000, 3_000_000, 10_000_000)


def _sample_tree(proc: psutil.Process, peaks: dict[str, float], stop: threading.Event) -> None:
    """Peak RSS of the driver process and of its largest child (a worker), every 50 ms."""
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            peaks["driver"] = max(peaks["driver"], proc.memory_info().rss / 2**20)
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    peaks["worker"] = max(peaks["worker"], child.memory_info().rss / 2**20)
        time.sleep(0.05)


def cli_run(root: Path, upstream: Path, policies: Path, scheduler: str, workers: int | None) -> dict:
    """``seg1b run`` exactly as a user runs it, in its own process: wall seconds, peak RSS of
    the driver and of the largest worker process, and every run's per-state seconds from the
    run receipts (the seed's baseline first when it was pinned by this command)."""
    cmd = [sys.executable, "-m", "seg1b_dask.cli", "run", "--seed", "42", "--upstream", str(upstream)]
    cmd += ["--root", str(root), "--policies", str(policies), "--quiet", "--scheduler", scheduler]
    cmd += ["--workers", str(workers)] if workers else []
    before = set((root / "runs").iterdir()) if (root / "runs").is_dir() else set()
    peaks = {"driver": 0.0, "worker": 0.0}
    stop = threading.Event()
    t = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = threading.Thread(target=_sample_tree, args=(proc, peaks, stop), daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    stop.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    runs = []
    for run in sorted(set((root / "runs").iterdir()) - before):
        receipt = json.loads((run / "run.json").read_text())
        runs.append(
            {
                "bundle": receipt["policy_bundle"],
                "wall_seconds": receipt["wall_seconds"],
                "states": {s["id"]: round(s["seconds"], 3) for s in receipt["states"]},
                "sites": next(s["stats"].get("sites") for s in receipt["states"] if s["id"] == "S3"),
            }
        )
    return {
        "wall_seconds": round(wall, 3),
        "peak_rss_mb_driver": round(peaks["driver"], 1),
        "peak_rss_mb_worker": round(peaks["worker"], 1),
        "runs": runs,
        "summary_tail": out.decode().splitlines()[-2:],
    }


def bench_scale(work: Path, sizes: tuple[int, ...], scheduler: str, workers: int | None) -> dict:
    """The scaling curve: ``seg1b run`` (remediation bundle, 5′ grid) on scaled 1A stand-ins
    (``seg1b upstream synth --scale N``), each size in a fresh run root, so every command pins
    the seed's baseline first (its seconds are reported apart) and then runs the candidate."""
    from seg1b_dask.io.upstream import write_bundle

    points = []
    for n in sizes:
        upstream = work / f"upstream-{n}"
        t = time.perf_counter()
        write_bundle(42, upstream, scale=n)
        synth_seconds = time.perf_counter() - t
        root = work / f"scale-{n}"
        run = cli_run(root, upstream, DEFAULT_POLICIES, scheduler, workers)
        candidate = next(r for r in run["runs"] if r["bundle"] == "remediation")
        baseline = next((r for r in run["runs"] if r["bundle"] == "baseline"), None)
        sites = candidate["sites"]
        point = {
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
            "candidate_states": candidate["states"],
            "baseline_states": baseline["states"] if baseline else None,
        }
        points.append(point)
        print(
            f"scale {sites:>10,} sites: whole command {point['whole_command_seconds']:.1f} s "
            f"(candidate run {point['candidate_run_seconds']:.1f} s, {point['candidate_seconds_per_million_sites']:.1f}"
            f" s per M sites), peak RSS driver {point['peak_rss_mb_driver']:.0f} MiB",
            flush=True,
        )
        shutil.rmtree(root)
        shutil.rmtree(upstream)
    return {"scheduler": scheduler, "workers": workers, "points": points}


def scale_plot(scale: dict, path: Path) -> None:
    """Seconds per state and peak RSS against sites (log-log), one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = scale["points"]
    sites = np.asarray([p["sites"] for p in points], dtype=float)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8))
    for state in points[-1]["candidate_states"]:
        seconds = np.asarray([max(p["candidate_states"][state], 1e-3) for p in points])
        ax_t.plot(sites, seconds, marker="o", lw=1, label=state)
    ax_t.plot(sites, [p["candidate_run_seconds"] for p in points], marker="s", lw=2.5, color="k", label="run")
    ax_t.plot(sites, [p["whole_command_seconds"] for p in points], ls="--", color="k", label="whole command")
    ax_t.plot(sites, sites / sites[-1] * points[-1]["candidate_run_seconds"], ls=":", color="grey", label="∝ sites")
    ax_t.set(xscale="log", yscale="log", xlabel="sites", ylabel="seconds", title="seg1b run, remediation, 5′ grid")
    ax_t.legend(fontsize=7, ncol=2)
    ax_m.plot(sites, [p["peak_rss_mb_driver"] / 1024 for p in points], marker="o", label="driver")
    if any(p["peak_rss_mb_worker"] for p in points):
        ax_m.plot(sites, [p["peak_rss_mb_worker"] / 1024 for p in points], marker="o", label="largest worker")
    ax_m.set(xscale="log", xlabel="sites", ylabel="peak RSS (GiB)", title="memory")
    ax_m.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_strong_scaling(work: Path, n: int) -> dict:
    """One seed of ``n`` sites on a local cluster of 1 worker, then 2 (remediation, warm
    S1/S2 and a pinned baseline, so only the candidate's chain is timed): speed-up and the
    bytes are the same."""
    from seg1b_dask.io.lineage import read_manifest
    from seg1b_dask.io.upstream import write_bundle

    upstream = work / f"upstream-strong-{n}"
    write_bundle(42, upstream, scale=n)
    root = work / "strong"
    ratio = float(pin_baseline_run(root, 42, Execution(), upstream=upstream)["nn_ratio"])
    out: dict = {"sites_requested": n}
    digests = {}
    for workers in (1, 2):
        _drop_seeded(root)
        execution = Execution(scheduler="distributed", workers=workers)
        with RssSampler() as rss:
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
            "peak_rss_mb_all_processes": round(max(rss.peaks.values()), 1),
        }
    out["sites"] = result.validation["metrics"]["sites"]
    out["speedup_2_over_1"] = round(out["workers_1"]["wall_seconds"] / out["workers_2"]["wall_seconds"], 3)
    out["identical_outputs"] = digests[1] == digests[2]
    shutil.rmtree(root)
    return out


def bench_memory(work: Path) -> dict:
    """Peak RSS of S4-S9 at 31 k and 1 M sites with the same country mix (seed 42's merchants
    copied 32 times), baseline bundle, S1/S2 warm: the whole process under the threaded
    scheduler (tasks run in it, each bounded by ``sites_per_task``), and the driver alone
    when the tasks run on a local cluster's workers. Neither may grow with the sites."""
    bundles = {
        label: replicated_bundle(42, copies, work / f"upstream-x{copies}") for label, copies in (("31k", 1), ("1M", 32))
    }
    out: dict = {}
    for mode, execution, children in (
        ("distributed_driver", Execution(scheduler="distributed", workers=2), False),  # first: a fresh driver
        ("threads_process", Execution(), True),
    ):
        root = work / f"memory-{mode}"
        run_seed(root=root, seed=42, policies=BASELINE_POLICIES, execution=execution)  # warm S1/S2, imports
        result_by_label = {}
        for label, bundle in bundles.items():
            with RssSampler(children=children) as rss:
                t = time.perf_counter()
                result = run_seed(
                    root=root, seed=42, policies=BASELINE_POLICIES, upstream=bundle, execution=execution,
                    on_state=rss.mark,
                )  # fmt: skip
                wall = time.perf_counter() - t
            result_by_label[label] = {
                "sites": result.validation["metrics"]["sites"],
                "wall_seconds": round(wall, 3),
                "states": {
                    s.id: {"seconds": round(s.seconds, 3), "peak_rss_mb": round(rss.peaks.get(s.id, 0.0), 1)}
                    for s in result.states
                },
                "peak_rss_mb_s4_s9": round(max(rss.peaks.get(f"S{i}", 0.0) for i in range(4, 10)), 1),
            }
        result_by_label["rss_ratio_1m_over_31k"] = round(
            result_by_label["1M"]["peak_rss_mb_s4_s9"] / result_by_label["31k"]["peak_rss_mb_s4_s9"], 3
        )
        out[mode] = result_by_label
    return out


def bench_report(work: Path) -> dict:
    """The run report at 31 k sites (a real run beside its baseline), and its costly parts at
    10 M sites: reading lon/lat, the datashader map, the top moves over 10 M lineage rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from seg1b_dask.report import run_page as report

    root = work / "report"
    ratio = float(pin_baseline_run(root, 42, Execution())["nn_ratio"])
    result = run_seed(root=root, seed=42, policies=DEFAULT_POLICIES, execution=Execution(), baseline_nn_ratio=ratio)
    score_run(root, result.run_dir)
    t = time.perf_counter()
    report.run_report(root, result.run_dir)
    first = time.perf_counter() - t
    t = time.perf_counter()
    report.run_report(root, result.run_dir)
    again = time.perf_counter() - t
    n = 10_000_000
    g = np.random.default_rng(0)
    sites = SITE_LOCATIONS.read(result.outputs["site_locations"], columns=["lon_deg", "lat_deg", "legal_country_iso"])
    pick = g.integers(0, sites.num_rows, n)
    lon = sites.column("lon_deg").to_numpy()[pick] + g.normal(0, 0.02, n)
    lat = np.clip(sites.column("lat_deg").to_numpy()[pick] + g.normal(0, 0.02, n), -90, 90)
    iso = sites.column("legal_country_iso").take(pa.array(pick))
    path = work / "report-10m.parquet"
    pq.write_table(pa.table({"lon_deg": lon, "lat_deg": lat}), path)
    lineage = pa.table({"source_country_iso": iso.take(pa.array(g.permutation(n))), "legal_country_iso": iso})
    with RssSampler() as rss:
        t = time.perf_counter()
        coords = pq.read_table(path)
        read_s = time.perf_counter() - t
        t = time.perf_counter()
        report.map_figure(
            [("10M", coords.column("lon_deg").to_numpy(), coords.column("lat_deg").to_numpy())] * 2
        )  # a candidate and a baseline panel
        map_s = time.perf_counter() - t
        t = time.perf_counter()
        report.flows(lineage, 15)
        moves_s = time.perf_counter() - t
    return {
        "run_31k_first_seconds": round(first, 3),
        "run_31k_again_seconds": round(again, 3),
        "sites_10m": {
            "read_lon_lat_seconds": round(read_s, 3),
            "map_two_panels_seconds": round(map_s, 3),
            "top_moves_seconds": round(moves_s, 3),
            "total_seconds": round(read_s + map_s + moves_s, 3),
            "peak_rss_mb": round(max(rss.peaks.values()), 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/benchmark.json"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scheduler", default="threads")
    parser.add_argument("--workers", type=int, default=None, help="workers for --scheduler (default: all cores)")
    parser.add_argument(
        "--suite",
        default="engine,grid30,scorer,certify,report,memory",
        help="comma-separated: engine, grid30, scorer, certify, report, memory, scale, strong",
    )
    parser.add_argument("--scale-sites", default=",".join(map(str, SCALE_SITES)), help="sites of the scale suite")
    parser.add_argument("--strong-sites", type=int, default=3_000_000, help="sites of the strong-scaling seed")
    parser.add_argument("--grid30-sites", type=int, default=1_000_000, help="large run at 30″ (0: none)")
    args = parser.parse_args(argv)
    suites = set(args.suite.split(","))
    execution = Execution(scheduler=args.scheduler)
    work = Path(tempfile.mkdtemp(prefix="seg1b-bench-"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
        },
        "execution": execution.as_dict(),
        "targets": {
            "warm_full_chain_s": 15,
            "warm_remediation_run_s": 10,
            "certify_4_seeds_s": 120,
            "cold_full_chain_s": 60,
            "grid30_s1_s2_s": 600,
            "grid30_peak_rss_mb": 4096,
            "grid30_full_chain_warm_31k_s": 30,
            "grid30_full_chain_warm_1m_s": 300,
            "scale_10m_whole_command_s": 600,
            "scale_10m_peak_rss_mb": 8192,
            "scale_seconds_per_million_10m_over_1m": 1.5,
        },
    }
    try:
        if "engine" in suites:
            # The remediation grades contraction against the seed's pinned baseline: pin it once.
            ratio = float(pin_baseline_run(work / "pin", 42, execution)["nn_ratio"])
            report["seed42_default_grid"] = {
                "baseline": bench_chain(work, args.repeat, execution, BASELINE_POLICIES, None),
                "remediation": bench_chain(work, args.repeat, execution, DEFAULT_POLICIES, ratio),
            }
        if "grid30" in suites:
            report["grid30"] = bench_grid30(work, execution, args.grid30_sites or None)
        if "scorer" in suites:
            report["scorer"] = bench_scorer(work)
        if "certify" in suites:
            report["certification"] = bench_certify(work, args.repeat)
        if "report" in suites:
            report["report"] = bench_report(work)
        if "memory" in suites:
            report["memory"] = bench_memory(work)
        if "scale" in suites:
            sizes = tuple(int(v) for v in args.scale_sites.split(","))
            report["scale"] = bench_scale(work, sizes, args.scheduler, args.workers)
            scale_plot(report["scale"], args.out.with_name(args.out.stem + "-scale.png"))
        if "strong" in suites:
            report["strong_scaling"] = bench_strong_scaling(work, args.strong_sites)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for bundle, chain in report.get("seed42_default_grid", {}).items():
        for phase in ("cold", "warm"):
            c = chain[phase]
            median, runs, peak = c["wall_seconds_median"], c["runs"], c["peak_rss_mb_max"]
            print(f"{bundle} {phase} full chain: {median} s (median of {runs}), peak {peak} MiB")
    for bundle, g in report.get("grid30", {}).items():
        if not isinstance(g, dict):
            continue
        cold, warm = g["s1_s2_cold"], g["full_chain_warm_31k"]
        print(
            f"{bundle} at 30″: S1+S2 cold {cold['wall_seconds']} s (peak {cold['peak_rss_mb']} MiB, "
            f"{cold['stored_mb']} MiB stored); full chain, S1/S2 warm, {warm['sites']:,} sites: "
            f"{warm['wall_seconds']} s"
        )
        for key, run in g.items():
            if key.startswith("full_chain_warm_") and key != "full_chain_warm_31k":
                print(
                    f"{bundle} at 30″, {run['sites']:,} sites: {run['wall_seconds']} s, peak {run['peak_rss_mb']} MiB"
                )
    if "strong_scaling" in report:
        st = report["strong_scaling"]
        print(
            f"strong scaling, {st['sites']:,} sites: 1 worker {st['workers_1']['wall_seconds']} s, 2 workers "
            f"{st['workers_2']['wall_seconds']} s, speed-up {st['speedup_2_over_1']} "
            f"(identical: {st['identical_outputs']})"
        )
    for label, r in report.get("scorer", {}).items():
        print(
            f"scorer {label}: scorecard {r['scorecard_seconds']} s; NN chunked {r['nn_chunked_seconds']} s "
            f"vs global tree {r['nn_global_tree_seconds']} s (identical: {r['nn_identical']})"
        )
    if "certification" in report:
        c = report["certification"]
        print(
            f"certify 4 seeds: parallel {c['parallel_median']} s vs 4 x `seg1b run` {c['sequential_cli_median']} s "
            f"(ratio {c['ratio_parallel_over_sequential_cli']}); vs 4 runs in one warm process "
            f"{c['sequential_in_process_median']} s (ratio {c['ratio_parallel_over_sequential_in_process']})"
        )
    if "report" in report:
        r = report["report"]
        print(
            f"report at 31 k sites: {r['run_31k_first_seconds']} s (again {r['run_31k_again_seconds']} s); "
            f"10 M sites: {r['sites_10m']['total_seconds']} s, peak {r['sites_10m']['peak_rss_mb']} MiB"
        )
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
