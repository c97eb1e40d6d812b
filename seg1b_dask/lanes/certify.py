"""The two lanes (DESIGN §7): the single-seed fast lane and the multi-seed certification
lane on a Dask cluster, plus scoring a finished run against the policies sealed with it."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from seg1b_dask.chain.runner import Chain, RunResult, ensure_standin, run_seed
from seg1b_dask.engine.execution import Execution, connect
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.grading import gates as grading
from seg1b_dask.grading import scoring
from seg1b_dask.io import discipline, packs
from seg1b_dask.io.lineage import read_manifest, stage_path, write_json, write_text
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.io.runroot import RunRoot, publish_folder, shared_root
from seg1b_dask.lanes import feasibility
from seg1b_dask.lanes.score import Scored, baseline_bundle, candidate_key, pin_baseline_run, score_run
from seg1b_dask.plan import closure
from seg1b_dask.policies.bundle import PolicyBundle, load_bundle
from seg1b_dask.report.pages import pack_report, run_report
from seg1b_dask.states.s4_alloc_plan import modes as s4_modes
from seg1b_dask.states.triage import triage_hints


@shared_root
def fast_lane(
    root: Path,
    seed: int,
    policies: Path,
    upstream: Path | None,
    execution: Execution,
    on_state: Callable[[str], None] | None = None,
) -> tuple[RunResult, Scored]:
    """One seed from its first dirty state, scored against the pinned baseline of its seed,
    grid and 1A bundle."""
    bundle = load_bundle(policies, refdata_version())  # loaded once: checked, run and recorded alike
    closure.check_locks(root, bundle.digests)
    key = candidate_key(root, seed, bundle.grid, upstream)
    ran = None
    ratio = None
    if bundle.s9_validation.target_grade != "none":  # graded against the pinned baseline: pin it first
        on_baseline = (lambda name: on_state(f"baseline {name}")) if on_state else None
        pinned = pin_baseline_run(root, seed, execution, on_baseline, upstream, bundle.grid)
        ratio, ran = float(pinned["nn_ratio"]), pinned.get("ran_run_id")
    result = run_seed(
        root=root,
        seed=seed,
        policies=bundle,
        upstream=upstream,
        execution=execution,
        on_state=on_state,
        baseline_nn_ratio=ratio,
    )
    # The first baseline run of a seed, grid and 1A bundle becomes their pinned authority.
    first_baseline = (
        discipline.baseline_pointer(root, key) is None
        and bundle.parameter_hash == baseline_bundle(bundle.grid).parameter_hash
    )
    scored = score_run(root, result.run_dir, pin_as_baseline=first_baseline)
    pin = scored.card.get("baseline")
    if pin and ran is not None:  # this command ran a baseline: say whether it is the one pinned
        base_card = packs.scorecard_json(RunRoot(root).run(pin["run_id"]))
        grade = discipline.read_json(base_card).get("grade_single_seed", {}) if base_card.is_file() else {}
        scored.card["baseline_pinned_now"] = {"run_id": pin["run_id"], "grade": grade.get("outcome"), "ran": ran}
    discipline.set_pointer(
        root,
        "current_candidate",
        {"run_id": result.run_id, "seed": seed, "parameter_hash": result.tokens.parameter_hash},
    )
    run_report(root, result.run_dir)
    return result, scored


@shared_root
def feasibility_of(
    root: Path, seed: int, policies: Path | PolicyBundle, upstream: Path | None, execution: Execution
) -> feasibility.Feasibility:
    """Predict a bundle's country gates for a seed, and each grade's least relocation, from
    the verified 1A bundle and S2's country mass vector (S1/S2 from the cache or built once)."""
    from seg1b_dask.chain.runner import code_digest
    from seg1b_dask.states import s0_gate

    run_root = RunRoot(root)
    bundle = policies if isinstance(policies, PolicyBundle) else load_bundle(policies, refdata_version())
    upstream_dir = Path(upstream) if upstream else ensure_standin(run_root, seed)
    s0_gate.verify(upstream_dir, seed, bundle.parameter_hash, code_digest())
    chain = Chain(run_root, seed, bundle, upstream_dir, execution)
    chain.run_global()
    return feasibility.assess(country_inputs(chain, upstream_dir, seed), bundle, seed)


def country_inputs(chain: Chain, upstream_dir: Path, seed: int) -> feasibility.CountryInputs:
    """The feasibility model's inputs for ``seed``'s 1A bundle beside a chain whose S1/S2
    are published (seed-free, so one chain serves every seed): 1A's counts, S2's country
    table and, where S4(b) does not follow the weights, each country's southern share
    under its own allocation."""
    from seg1b_dask.io.datasets import COUNTRY_MASS
    from seg1b_dask.io.upstream import CATALOGUE

    bundle = chain.bundle
    table = COUNTRY_MASS.read(chain.published["country_mass"]).to_pydict()
    inputs = feasibility.read_inputs(upstream_dir, CATALOGUE, table)
    if bundle.s4_alloc_plan.tile_allocation.method != "systematic":
        if s4_modes.mode_of(bundle.s4_alloc_plan.country_allocation).relocates:
            raise Seg1BError(
                Code.E_POLICY_INVALID,
                "feasibility predicts a re-mass only with systematic tile sampling",
                key="tile_allocation.method",
            )
        inputs = replace(inputs, site_south=_allocated_south(upstream_dir / CATALOGUE, chain, bundle, seed, table))
    return inputs


def _allocated_south(catalogue: Path, chain: Chain, bundle: PolicyBundle, seed: int, table: dict) -> np.ndarray:
    """Each country's southern share of sites under S4(b)'s own allocation of 1A's pairs
    (the legacy posture keeps 1A's pairs): tiles never straddle the equator."""
    import pyarrow.parquet as pq

    from seg1b_dask.io.datasets import TILE_GRID
    from seg1b_dask.states.s4_alloc_plan import allocate_country_tiles

    pairs = (
        pq.read_table(catalogue, columns=["merchant_id", "legal_country_iso"])
        .group_by(["legal_country_iso", "merchant_id"])
        .aggregate([("merchant_id", "count")])
        .rename_columns(["legal_country_iso", "merchant_id", "n_sites"])
        .sort_by([("legal_country_iso", "ascending"), ("merchant_id", "ascending")])
    )
    south = np.zeros(len(table["iso2"]))
    grid = chain.grid
    codes = np.asarray(pairs["legal_country_iso"].to_pylist(), dtype="U2")  # sorted: one slice per country
    for i, iso2 in enumerate(table["iso2"]):
        lo, hi = np.searchsorted(codes, iso2), np.searchsorted(codes, iso2, side="right")
        if lo == hi or not table["eligible"][i]:
            continue
        rows = pairs.slice(lo, hi - lo)
        tiles, weight = TILE_GRID.country_cells(
            chain.published["tile_grid"], chain.published["tile_weights"], table["country_id"][i]
        )
        plan, _ = allocate_country_tiles(rows, tiles, weight, iso2, bundle.s4_alloc_plan.tile_allocation, seed, grid)
        n = plan["n_sites"].to_numpy()
        south[i] = float(n[grid.south(plan["tile_id"].to_numpy())].sum() / n.sum())
    return south


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


def open_cluster(scheduler: str | None, workers: int | None, root: Path, connect_timeout: float):  # noqa: ANN201
    """(cluster or None, client): a LocalCluster of ``workers`` processes, or a client of the
    running scheduler whose workers all see ``root``."""
    from distributed import Client, LocalCluster

    if scheduler:
        return None, connect(scheduler, root, connect_timeout)
    cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True, dashboard_address=":0")
    return cluster, Client(cluster)


def _warm_worker() -> int:
    """Load the reference data once per worker process, before the seeds arrive."""
    from seg1b_dask.io import refdata

    return len(refdata.countries().iso2)


def run_and_score_seed(
    root: Path,
    seed: int,
    bundle: PolicyBundle,
    execution: Execution,
    emit: Callable[[str], None],
    scale: int | None = None,
) -> tuple[RunResult, Scored]:
    """One seed's whole chain, driven from a thread of the driver: its baseline on the
    bundle's grid (pinned once), the candidate run and its scorecard (its report follows,
    in the main thread). Every state's tasks go to the shared cluster, so all seeds' country
    batches and spatial chunks interleave in one graph; a lost worker costs only its tasks,
    which the scheduler reruns elsewhere. With ``scale``, the seed's stand-in holds about
    that many outlets."""

    def state(name: str) -> None:
        emit(f"seed {seed} {name}")

    upstream = None if scale is None else ensure_standin(RunRoot(Path(root)), seed, scale)
    pin = pin_baseline_run(root, seed, execution, lambda name: state(f"baseline {name}"), upstream, bundle.grid)
    result = run_seed(
        root=root,
        seed=seed,
        policies=bundle,
        upstream=upstream,
        execution=execution,
        on_state=state,
        baseline_nn_ratio=float(pin["nn_ratio"]),
    )
    return result, score_run(root, result.run_dir)


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
    from distributed import performance_report

    root = run_root.path
    emit = on_event or (lambda _msg: None)
    cluster, client = open_cluster(scheduler, workers, root, execution.connect_timeout)
    start = time.perf_counter()
    try:
        dashboard = client.dashboard_link or ""
        emit(f"dashboard {dashboard}")
        client.run(_warm_worker)
        with performance_report(filename=str(packs.dask_report_html(folder))):
            # Seed-free states once (the baselines' too), their spatial chunks spread over the
            # cluster; then every seed's chain from its own driver thread, all submitting to
            # the same cluster.
            Chain(run_root, seeds[0], bundle, Path("."), execution).run_global()
            upstreams = [None if scale is None else ensure_standin(run_root, seed, scale) for seed in seeds]
            keys = [candidate_key(root, seed, bundle.grid, up) for seed, up in zip(seeds, upstreams, strict=True)]
            if any(discipline.baseline_pointer(root, key) is None for key in keys):  # baselines to pin: theirs too
                Chain(run_root, seeds[0], baseline_bundle(bundle.grid), Path("."), execution).run_global()
            with ThreadPoolExecutor(len(seeds), thread_name_prefix="seg1b-seed") as pool:
                futures = {
                    seed: pool.submit(run_and_score_seed, root, seed, bundle, execution, emit, scale) for seed in seeds
                }
                wait_all(futures.values())  # every seed ends before an error propagates
                done = {seed: future.result() for seed, future in futures.items()}
            for result, _ in done.values():  # matplotlib is not thread-safe: reports one by one
                run_report(root, result.run_dir)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
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
