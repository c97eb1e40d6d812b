"""memory: driver peak RSS of S4-S9 at 31 k and 1 M sites with one country mix (seed 42's
merchants copied 32 times), baseline bundle, S1/S2 warm."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harness import Bench, RssSampler
from seg1b_dask.chain.runner import BASELINE_POLICIES, run_seed
from seg1b_dask.engine.execution import Execution
from seg1b_dask.io.hashing import seal_bundle
from seg1b_dask.io.upstream import CANDIDATES, CATALOGUE, write_bundle

TARGETS: dict[str, float] = {}
COPIES = {"31k": 1, "1M": 32}
MODES = (
    ("distributed_driver", Execution(scheduler="distributed", workers=2), False),  # first: a fresh driver
    ("threads_process", Execution(), True),
)


def options(group: argparse._ArgumentGroup) -> None:
    """No options of its own."""


def steps(args: argparse.Namespace) -> int:
    return 1 + len(MODES) * (1 + len(COPIES))


def replicated_bundle(seed: int, copies: int, out: Path) -> Path:
    """Seed ``seed``'s 1A stand-in with every merchant copied ``copies`` times under new ids:
    the same country mix at ``copies`` times the sites (a memory probe, not a realistic 1A)."""
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


def run(bench: Bench) -> dict[str, Any]:
    """Peak RSS of S4-S9 at 31 k and 1 M sites with the same country mix, baseline bundle,
    S1/S2 warm: the whole process under the threaded scheduler (tasks run in it, each bounded
    by ``sites_per_task``), and the driver alone when the tasks run on a local cluster's
    workers. Neither may grow with the sites."""
    with bench.progress.step("memory: seed 42's 1A stand-in, x1 and x32"):
        bundles = {label: replicated_bundle(42, n, bench.work / f"upstream-x{n}") for label, n in COPIES.items()}
    out: dict[str, Any] = {}
    for mode, execution, children in MODES:
        root = bench.work / f"memory-{mode}"
        with bench.progress.step(f"memory: {mode}, S1/S2 and imports warm"):
            run_seed(root=root, seed=42, policies=BASELINE_POLICIES, execution=execution)
        result_by_label: dict[str, Any] = {}
        for label, bundle in bundles.items():
            with bench.progress.step(f"memory: {mode}, {label} sites"), RssSampler(children=children) as rss:
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
    return {"memory": out}


def summary(fields: dict[str, Any]) -> list[str]:
    return [
        f"memory {mode}: peak RSS over S4-S9 {r['31k']['peak_rss_mb_s4_s9']} MiB at 31 k sites, "
        f"{r['1M']['peak_rss_mb_s4_s9']} MiB at 1 M (ratio {r['rss_ratio_1m_over_31k']})"
        for mode, r in fields["memory"].items()
    ]
