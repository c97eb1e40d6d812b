"""The certification lane (DESIGN §7): every seed's full chain in parallel on one Dask
cluster, graded together into a certification pack, written whole or not at all."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg1b_dask.chain.runner import Chain, RunResult, ensure_standin
from seg1b_dask.engine.execution import Execution, dask_cluster
from seg1b_dask.engine.interrupts import in_threads
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.grading import gates as grading
from seg1b_dask.grading import scoring
from seg1b_dask.io import discipline, packs
from seg1b_dask.io.lineage import read_manifest, stage_path, write_json, write_text
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.io.runroot import RunRoot, publish_folder
from seg1b_dask.lanes.score import Scored, baseline_bundle, candidate_key, run_and_score
from seg1b_dask.plan import closure
from seg1b_dask.policies.bundle import PolicyBundle, load_bundle
from seg1b_dask.report.pack_page import pack_report
from seg1b_dask.report.run_page import run_report
from seg1b_dask.states.triage import triage_hints


@dataclass
class Pack:
    folder: Path
    report: grading.GradeReport
    scored: dict[int, Scored]
    results: dict[int, RunResult]
    wall_seconds: float
    dashboard: str
    promoted: bool
    target_grade: str  # the bundle's (s9_validation.yaml): a pack below it fails the certification

    @property
    def content_sha256(self) -> str:
        return str(json.loads((packs.pack_json(self.folder)).read_text())["content_sha256"])


@contextlib.contextmanager
def _dask_report(path: Path) -> Iterator[None]:
    """Dask's performance report of the block, written when the block ends well: after an
    error or an interrupt there is no pack to hold it, and building it would only delay the
    stop."""
    from distributed import performance_report

    report = performance_report(filename=str(path))
    report.__enter__()
    yield
    report.__exit__(None, None, None)


def _warm_worker() -> int:
    """Load the reference data once per worker process, before the seeds arrive."""
    from seg1b_dask.io import refdata

    return len(refdata.countries().iso2)


def _seed(
    root: Path,
    seed: int,
    bundle: PolicyBundle,
    execution: Execution,
    emit: Callable[[str], None],
    upstream: Path | None,
) -> tuple[RunResult, Scored]:
    """One seed's whole chain, driven from a thread of the driver: its baseline pinned once,
    the candidate run and its scorecard (its report follows, in the main thread). Every
    state's tasks go to the shared cluster, so all seeds' country batches and spatial chunks
    interleave in one graph; a lost worker costs only its tasks, which the scheduler reruns
    elsewhere. A certification grades every seed against its pinned baseline."""

    def on_state(name: str) -> None:
        emit(f"seed {seed} {name}")

    done = run_and_score(root, seed, bundle, execution, on_state, upstream, graded=True)
    return done.result, done.scored


def certify(
    root: Path,
    seeds: list[int] | None,
    policies: Path,
    scheduler: str | None = None,
    workers: int | None = None,
    promote: bool = False,
    on_event: Callable[[str], None] | None = None,
    country_batch: int = Execution.country_batch,
    sites_per_task: int = Execution.sites_per_task,
    connect_timeout: float = Execution.connect_timeout,
    scale: int | None = None,
) -> Pack:
    """Run the full chain for every seed (default: the gates' required seeds) in parallel on
    a Dask cluster and write a pack (whole or not at all). With ``scale``, every seed's 1A
    stand-in holds about that many outlets."""
    run_root = RunRoot.open(root)
    bundle = load_bundle(policies, refdata_version())
    seeds = list(seeds) if seeds else list(bundle.gates.required_seeds)
    closure.check_locks(run_root.path, bundle.digests)
    pack_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{bundle.parameter_hash[:8]}"
    with run_root.shared():  # staged under the lock: a prune can never take the staging folder
        staging = stage_path(run_root.certification / pack_id)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            return _certify(
                run_root,
                staging,
                pack_id,
                bundle,
                seeds,
                scheduler,
                workers,
                promote,
                on_event,
                Execution(
                    scheduler="attached",
                    country_batch=country_batch,
                    sites_per_task=sites_per_task,
                    connect_timeout=connect_timeout,
                ),
                scale,
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _certify(
    run_root: RunRoot,
    folder: Path,
    pack_id: str,
    bundle: PolicyBundle,
    seeds: list[int],
    scheduler: str | None,
    workers: int | None,
    promote: bool,
    on_event: Callable[[str], None] | None,
    execution: Execution,
    scale: int | None,
) -> Pack:
    """The pack is written into the staging ``folder`` and renamed into place whole; every
    seed's tasks go to the cluster (``execution`` is attached to it)."""
    root = run_root.path
    emit = on_event or (lambda _msg: None)
    with dask_cluster(scheduler, workers, root, execution.connect_timeout) as client:
        start = time.perf_counter()
        dashboard = client.dashboard_link or ""
        emit(f"dashboard {dashboard}")
        client.run(_warm_worker)
        with _dask_report(packs.dask_report_html(folder)):
            # Seed-free states once (the baselines' too), their spatial chunks spread over the
            # cluster; then every seed's chain from its own driver thread, all submitting to
            # the same cluster.
            Chain(run_root, seeds[0], bundle, Path("."), execution).run_global()
            upstreams = [None if scale is None else ensure_standin(run_root, seed, scale) for seed in seeds]
            keys = [candidate_key(root, seed, bundle.grid, up) for seed, up in zip(seeds, upstreams, strict=True)]
            if any(discipline.baseline_pointer(root, key) is None for key in keys):  # baselines to pin: theirs too
                Chain(run_root, seeds[0], baseline_bundle(bundle.grid), Path("."), execution).run_global()
            outcomes = in_threads(
                lambda pair: _seed(root, pair[0], bundle, execution, emit, pair[1]),
                list(zip(seeds, upstreams, strict=True)),
                len(seeds),
                "seed",
            )
            done = dict(zip(seeds, outcomes, strict=True))
        for result, _ in done.values():  # matplotlib is not thread-safe: reports one by one
            run_report(root, result.run_dir)
    wall = time.perf_counter() - start
    results = {s: d[0] for s, d in done.items()}
    scored = {s: d[1] for s, d in done.items()}
    for seed, result in results.items():  # every seed ran exactly the bundle this pack records
        if result.tokens.parameter_hash != bundle.parameter_hash:
            raise Seg1BError(
                Code.E_TOKEN_MISMATCH,
                f"seed {seed} ran parameter_hash {result.tokens.parameter_hash[:12]}…, "
                f"the pack certifies {bundle.parameter_hash[:12]}…",
                file=folder,
            )
    bootstrap = {s: sc.bootstrap for s, sc in scored.items()}
    report = grading.grade(
        {s: sc.card for s, sc in scored.items()},
        bundle.gates,
        {s: sc.structural for s, sc in scored.items()},
        bootstrap if all(bootstrap.values()) else None,
        hints=triage_hints(bundle),
    )
    _write_pack(folder, bundle, seeds, results, scored, report, wall, scale)
    folder = publish_folder(folder, run_root.certification, pack_id, lambda final: pack_report(root, folder, final))
    promoted = False
    if promote:
        if report.outcome == "RED":
            raise Seg1BError(
                Code.E_PROMOTION_REFUSED,
                "promotion refused: a required seed fails a hard gate",
                file=packs.grade_json(folder),
                key=", ".join(sorted({f.gate for f in report.failures["B"]})),
            )
        pointer = {
            "pack_id": folder.name,
            "grade": report.outcome,
            "run_ids": [r.run_id for r in results.values()],
            "parameter_hash": bundle.parameter_hash,
        }
        discipline.set_pointer(root, "last_good", pointer)
        discipline.set_pointer(root, "current_candidate", pointer)
        promoted = True
    return Pack(folder, report, scored, results, wall, dashboard, promoted, bundle.s9_validation.target_grade)


def _write_pack(
    folder: Path,
    bundle: PolicyBundle,
    seeds: list[int],
    results: dict[int, RunResult],
    scored: dict[int, Scored],
    report: grading.GradeReport,
    wall: float,
    scale: int | None,
) -> None:
    for seed, sc in scored.items():
        scoring.write_scorecard(sc.card, packs.seed_scorecard_dir(folder, seed))
    metric_names = [m for m, _, _ in grading.METRIC_GATES]
    pooled = {m: float(np.mean([scored[s].card["metrics"][m] for s in seeds])) for m in metric_names}
    write_json(packs.pooled_json(folder), {"mean_over_seeds": pooled, "seeds": seeds})
    lines = ["metric," + ",".join(f"seed_{s}" for s in seeds) + ",mean,cv"]
    for m in metric_names:
        vals = [scored[s].card["metrics"][m] for s in seeds]
        lines.append(
            ",".join([m, *(f"{v:.6f}" for v in vals), f"{pooled[m]:.6f}", f"{report.cv.get(m, float('nan')):.6f}"])
        )
    write_text(packs.cv_csv(folder), "\n".join(lines) + "\n")
    write_json(packs.grade_json(folder), report.as_dict())
    baselines = [scored[s].card["baseline"] for s in seeds]
    pack = {
        "seeds": seeds,
        "scale": scale,  # the stand-ins' outlets (None: the plain stand-in)
        "policy_bundle": bundle.name,
        "parameter_hash": bundle.parameter_hash,
        "policy_digests": bundle.digests,
        "run_ids": [results[s].run_id for s in seeds],
        "baseline_run_ids": [b["run_id"] for b in baselines if b],
        "manifest_fingerprints": {str(s): results[s].tokens.manifest_fingerprint for s in seeds},
        "grade": report.outcome,
        "outputs": {
            str(s): {name: read_manifest(path)["content_sha256"] for name, path in sorted(results[s].outputs.items())}
            for s in seeds
        },
        "wall_seconds": round(wall, 3),
    }
    write_json(packs.pack_json(folder), pack)
    write_json(packs.pack_json(folder), {**pack, "content_sha256": packs.pack_content_sha256(folder)})
