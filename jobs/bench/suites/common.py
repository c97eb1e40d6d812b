"""What several suites run: seed 42's chain measured per state, a run root reduced to its
warm parts, seed 42's sites, and many sites scattered around them."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from harness import RssSampler
from seg1b_dask.chain.runner import DEFAULT_POLICIES, RunResult, run_seed
from seg1b_dask.engine.execution import Execution
from seg1b_dask.io.runroot import RunRoot

SEEDED_STATES = ("S3", "S4", "S5", "S6", "S7", "S8", "S9")


def chain_run(
    root: Path, execution: Execution, policies: Path, baseline_nn_ratio: float | None, upstream: Path | None = None
) -> dict[str, Any]:
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
        "peak_rss_mb": round(rss.peak, 1),
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


def drop_seeded(root: Path) -> None:
    """Keep S1/S2, baselines and the 1A bundles; forget every seeded result of candidates."""
    keep = set()
    for pointer in RunRoot(root).pin_files():
        keep.add(json.loads(pointer.read_text())["run_id"])
    for run in list((root / "runs").iterdir()):
        if run.name not in keep:
            shutil.rmtree(run)
    for state in SEEDED_STATES:
        for entry in (root / "cache" / state).glob("*.json"):
            keep_entry = any(k[-8:] in entry.read_text() for k in keep)
            if not keep_entry:
                entry.unlink()
    shutil.rmtree(root / "certification", ignore_errors=True)


def seed42_remediation(root: Path) -> RunResult:
    """Seed 42 under the remediation bundle at the stand-in's size (31 k sites), graded
    against a fixed baseline ratio: a real run whose sites other suites measure."""
    return run_seed(root=root, seed=42, policies=DEFAULT_POLICIES, execution=Execution(), baseline_nn_ratio=10.0)


def scattered(
    lon: NDArray[np.float64], lat: NDArray[np.float64], n: int, g: np.random.Generator
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """``n`` sites around the given ones (a uniform pick, 2 km normal scatter): the same
    countries and clusters at any size. The picks, then the new coordinates."""
    pick = g.integers(0, len(lon), n)
    return pick, lon[pick] + g.normal(0, 0.02, n), np.clip(lat[pick] + g.normal(0, 0.02, n), -90, 90)
