"""Closing the plan's phases (seed plan §5 closure records, §7 freeze rule): ``lock`` a
phase once its DoD passes (reproducing the run from scratch first), refuse runs that change
a locked policy, ``reopen`` on a reason and contradicting evidence, ``freeze`` a GREEN pack
as the authority."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from filelock import FileLock

from seg1b_dask.engine.execution import Execution
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.grading import checkpoints
from seg1b_dask.io import discipline, packs
from seg1b_dask.io.discipline import read_json, read_optional, utc_now
from seg1b_dask.io.lineage import read_manifest, safe_join, stage_path, write_json
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.plan.diagnose import diagnose
from seg1b_dask.plan.dod import RUN_PHASES
from seg1b_dask.plan.dod_p5 import p5_items
from seg1b_dask.plan.evidence import RUN_NEEDS, Evidence, is_locked
from seg1b_dask.plan.items import Item, PhaseStatus, fmt, repro_item
from seg1b_dask.plan.phases import CHECKPOINT_OF, PHASE_OF, PHASES, TARGET_POLICY, TUNES, contradicts
from seg1b_dask.plan.status import plan_seed, status
from seg1b_dask.policies.bundle import sealed_bundle

FREEZE_STATEMENT = (
    "{phase} ({state}: {policy}.yaml, digest {digest}) is locked; downstream phases must treat this "
    "policy and its shape as immutable unless an explicit reopen with a reason and contradicting evidence is recorded."
)


@contextmanager
def _records(rr: RunRoot) -> Iterator[None]:
    """Lock records change one writer at a time (``lock`` and ``reopen`` read, decide, write)."""
    rr.locks.mkdir(parents=True, exist_ok=True)
    with FileLock(rr.locks / ".records.lock"):
        yield


def _refuse_unmet(phase: str, subject: str, unmet: list[Item], root: Path, code: Code = Code.E_DOD_FAILED) -> None:
    if unmet:
        first = unmet[0].evidence
        raise Seg1BError(
            code,
            f"{phase} DoD not met on {subject}: "
            + "; ".join(f"{i.text} ({i.status}{': ' + i.detail if i.detail else ''})" for i in unmet),
            file=None if first.endswith("/") else safe_join(root, first),
        )


def lock(root: Path, phase: str, run: Path, execution: Execution) -> dict[str, Any]:
    """Close ``phase`` at ``run``: refused unless its DoD passes and every earlier phase is
    done; reproduces the run from scratch first; writes the plan's closure record."""
    if phase not in PHASES:
        raise Seg1BError(Code.E_UNKNOWN_PHASE, f"phases to lock are {', '.join(PHASES)}", key=phase)
    meta = discipline.load_run(run, needs=RUN_NEEDS)
    ev = Evidence(root, meta["seed"])
    rr = ev.rr
    existing = ev.locks.get(phase)
    if is_locked(existing):
        raise Seg1BError(
            Code.E_PHASE_LOCKED,
            f"{phase} is already locked by run {existing['run_id']}; reopen it with evidence first (seg1b reopen)",
            file=rr.lock_record(phase),
        )
    seed = plan_seed(root)
    if seed is not None and seed != meta["seed"]:
        raise Seg1BError(
            Code.E_DOD_FAILED,
            f"the plan runs on seed {seed} (its locks'); run {meta['run_id']} is seed {meta['seed']}",
            file=packs.run_json(run),
            key="seed",
        )
    before = status(root, meta["seed"], through=phase)[-1]
    if before.waiting:
        raise Seg1BError(
            Code.E_DOD_FAILED,
            f"{phase} waits for {before.waiting}: close the phases in order (seg1b status --seed {meta['seed']})",
            file=rr.lock_record(before.waiting) if before.waiting in PHASES else None,
        )
    judged = RUN_PHASES[phase](ev, meta["run_id"], meta)
    _refuse_unmet(phase, f"run {meta['run_id']}", PhaseStatus(phase, meta["run_id"], judged).unmet, ev.root)
    record = reproduce(root, run, execution)
    if not record["identical"]:
        raise Seg1BError(
            Code.E_NOT_REPRODUCIBLE,
            f"run {meta['run_id']} did not reproduce: {', '.join(record['differing'])}",
            file=rr.repro_record(meta["run_id"]),
        )
    profiles = ev.profiles(meta["run_id"])
    card = ev.card(meta["run_id"]) or {}
    policy = PHASES[phase]
    checkpoint = CHECKPOINT_OF[phase]
    closure = {
        "phase": phase,
        "state": "locked",
        "policy": policy,
        "policy_digest": meta["policy_digests"][policy],
        "policy_settings": meta["policies"][policy],
        "locked_at": utc_now(),
        "run_id": meta["run_id"],
        "tokens": {k: meta[k] for k in ("run_id", "seed", "parameter_hash", "manifest_fingerprint")},
        "package": meta["package"],
        "evidence": {
            "run": f"runs/{meta['run_id']}/run.json",
            "scorecard": f"runs/{meta['run_id']}/scorecard/scorecard.json",
            "checkpoints": f"runs/{meta['run_id']}/{checkpoints.FOLDER}/checkpoints.json",
            "reproducibility": str(rr.repro_record(meta["run_id"]).relative_to(rr.path)),
        },
        "dod": [asdict(i) for i in judged if not i.settled_on_close]
        + [asdict(repro_item(phase, meta["run_id"], record))],
        "accepted_metrics": {
            "scorecard": card.get("metrics", {}),
            checkpoint: profiles[checkpoint].as_dict() if profiles else {},
        },
        "freeze_statement": FREEZE_STATEMENT.format(
            phase=phase, state=TUNES[phase], policy=policy, digest=meta["policy_digests"][policy]
        ),
        "reopened": [],  # an earlier record, with its reopen history, is kept under previous
        "previous": ([{k: v for k, v in existing.items() if k != "previous"}, *existing.get("previous", [])])
        if existing
        else [],
    }
    with _records(rr):
        now = {p: read_optional(rr.lock_record(p)) for p in PHASES if p <= phase}
        if now != {p: ev.locks.get(p) for p in now}:  # a lock or reopen landed while this one reproduced the run
            raise Seg1BError(
                Code.E_PHASE_LOCKED,
                f"{phase} or a phase before it changed while this lock ran; check seg1b status and lock again",
                file=rr.lock_record(phase),
            )
        write_json(rr.lock_record(phase), closure)
    return closure


def reproduce(root: Path, run: Path, execution: Execution) -> dict[str, Any]:
    """Run ``run``'s seed again from scratch (a fresh run root, no cache) under its sealed
    policies and compare every dataset's content digest; the record lands in ``reports/``."""
    from seg1b_dask.chain.runner import run_seed

    meta = discipline.load_run(run, needs=(*RUN_NEEDS, "upstream", "baseline_nn_ratio"))
    rr = RunRoot(Path(root).resolve())
    rr.reports.mkdir(exist_ok=True)
    scratch = stage_path(rr.repro_record(meta["run_id"]).with_suffix(""))
    shutil.rmtree(scratch, ignore_errors=True)
    started = time.perf_counter()
    try:
        again = run_seed(
            RunRoot.open(scratch),
            meta["seed"],
            sealed_bundle(meta),
            Path(meta["upstream"]),
            execution,
            baseline_nn_ratio=meta["baseline_nn_ratio"],
        )
        datasets = {}
        for name, rel in sorted(meta["outputs"].items()):
            first = read_manifest(safe_join(rr.path, rel))["content_sha256"]
            second = read_manifest(again.outputs[name])["content_sha256"]
            datasets[name] = {"run": first, "again": second, "identical": first == second}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    differing = [n for n, d in datasets.items() if not d["identical"]]
    record = {
        "run_id": meta["run_id"],
        "seed": meta["seed"],
        "checked_at": utc_now(),
        "seconds": round(time.perf_counter() - started, 2),
        "identical": not differing,
        "differing": differing,
        "datasets": datasets,
    }
    write_json(rr.repro_record(meta["run_id"]), record)
    return record


def check_locks(root: Path, digests: dict[str, str]) -> list[dict[str, Any]]:
    """Refuse a bundle that changes a locked policy (a reopened phase no longer binds).
    Returns the locks in force."""
    rr = RunRoot(Path(root))
    in_force = []
    for phase, policy in PHASES.items():
        path = rr.lock_record(phase)
        lock = read_optional(path)
        if lock is None or not is_locked(lock):
            continue
        in_force.append(lock)
        if digests[policy] != lock["policy_digest"]:
            raise Seg1BError(
                Code.E_PHASE_LOCKED,
                f"{policy} is locked by {phase} (run {lock['run_id']}); "
                f"reopen it with a reason and a run showing the contradiction (seg1b reopen {phase})",
                file=path,
                key=policy,
            )
    return in_force


def reopen(root: Path, phase: str, reason: str, evidence: Path) -> tuple[dict[str, Any], list[str]]:
    """Reopen a locked phase: needs a reason and a run, made under the lock with the locked
    run's grid, S3, S8 and gates, whose checkpoints show a gate first going wrong at the
    phase's state. Both are recorded; the later locked phases, built on this one, reopen
    with it. Returns the record and those later phases."""
    rr = RunRoot(Path(root).resolve())
    path = rr.lock_record(phase)
    lock = read_optional(path)
    if lock is None or not is_locked(lock):
        raise Seg1BError(Code.E_REOPEN_REFUSED, f"{phase} is not locked: nothing to reopen", file=path, key=phase)
    if not reason.strip():
        raise Seg1BError(Code.E_REOPEN_REFUSED, "a reopen needs a reason (--reason)", file=path, key=phase)
    meta = discipline.load_run(evidence, needs=RUN_NEEDS)
    locked_meta = discipline.load_run(rr.run(lock["run_id"]), needs=RUN_NEEDS)
    changed = [
        name
        for name, digest in meta["policy_digests"].items()
        if (name == lock["policy"] or (name not in PHASE_OF and name != TARGET_POLICY))
        and digest != locked_meta["policy_digests"][name]
    ]
    if changed:
        raise Seg1BError(
            Code.E_REOPEN_REFUSED,
            f"run {meta['run_id']} was not made under {phase}'s lock: {', '.join(changed)} differ from the "
            "locked run's, so it cannot contradict it",
            file=packs.run_json(evidence),
            key=", ".join(changed),
        )
    found = diagnose(rr.path, evidence)
    contradicting = [t for t in found.failing if phase in contradicts(t)]
    if not contradicting:
        failing = ", ".join(f"{t.gate} at {t.first_wrong}" for t in found.failing) or "no gate fails"
        raise Seg1BError(
            Code.E_REOPEN_REFUSED,
            f"run {meta['run_id']} shows no gate contradicting {phase} ({failing})",
            file=packs.run_json(evidence),
            key=phase,
        )
    entry = {
        "at": utc_now(),
        "reason": reason.strip(),
        "evidence_run": meta["run_id"],
        "level": found.level,
        "contradiction": [
            f"{t.gate} first wrong at {t.first_wrong}: {fmt(t.run[str(t.first_wrong)])} vs {fmt(t.threshold)}"
            for t in contradicting
        ],
    }
    cascaded = []
    with _records(rr):
        if read_json(path) != lock:
            raise Seg1BError(Code.E_REOPEN_REFUSED, f"{phase} changed meanwhile; check seg1b status", file=path)
        for later in [p for p in PHASES if p > phase]:
            record = read_optional(rr.lock_record(later))
            if is_locked(record):
                cascade = dict(entry, reason=f"{phase} reopened upstream: {entry['reason']}", cascade=True)
                history = [*record.get("reopened", []), cascade]
                write_json(rr.lock_record(later), record | {"state": "reopened", "reopened": history})
                cascaded.append(later)
        lock = lock | {"state": "reopened", "reopened": [*lock.get("reopened", []), entry]}
        write_json(path, lock)
    return lock, cascaded


# -- freeze -------------------------------------------------------------------------


def freeze(root: Path, pack: Path) -> dict[str, Any]:
    """P5: make a GREEN pack whose DoD passes the authority. Holding the run root alone:
    point ``last_good`` at it, remove superseded packs and every run nothing references,
    then write the final lock set (policy files and digests, code digest, the sha256 of the
    pack's scorecards and reports, what was retained and why)."""
    from seg1b_dask.io.hashing import sha256_file

    run_root = RunRoot.open(root)
    grade = read_json(packs.grade_json(pack))
    if grade["outcome"] == "RED":
        failing = sorted({f["gate"] for f in grade["failures"]["B"]})
        raise Seg1BError(
            Code.E_FREEZE_REFUSED,
            f"only a GREEN pack can be frozen; this one is RED ({', '.join(failing)})",
            file=packs.grade_json(pack),
        )
    info = read_json(packs.pack_json(pack))
    locked = plan_seed(run_root.path)
    seed = int(info["seeds"][0]) if locked is None else locked
    with run_root.exclusive():
        open_before = [p.phase for p in status(run_root.path, seed, through="P4") if p.state != "done"]
        if open_before:
            raise Seg1BError(
                Code.E_FREEZE_REFUSED,
                f"the plan is not ready for P5: {', '.join(open_before)} not done (seg1b status --seed {seed})",
                file=packs.pack_json(pack),
            )
        ev = Evidence(run_root.path, seed)
        unmet = PhaseStatus("P5", pack.name, p5_items(ev, pack)).unmet
        _refuse_unmet("P5", f"pack {pack.name}", unmet, run_root.path, Code.E_FREEZE_REFUSED)
        meta = discipline.load_run(run_root.run(info["run_ids"][0]), needs=RUN_NEEDS)
        discipline.set_pointer(
            run_root.path,
            "last_good",
            {
                "pack_id": pack.name,
                "grade": grade["outcome"],
                "run_ids": info["run_ids"],
                "parameter_hash": meta["parameter_hash"],
                "frozen": True,
            },
        )
        removed_packs = [p.name for p in run_root.packs() if p.name != pack.name]
        for name in removed_packs:
            shutil.rmtree(run_root.certification / name)
        pruned = discipline.prune_held(run_root, dry_run=False)
        record = {
            "pack_id": pack.name,
            "frozen_at": utc_now(),
            "grade": grade["outcome"],
            "seeds": grade["seeds"],
            "content_sha256": info["content_sha256"],
            "parameter_hash": meta["parameter_hash"],
            "policy_bundle": meta["policy_bundle"],
            "policy_digests": meta["policy_digests"],
            "policy_settings": meta["policies"],
            "refdata_version": meta["refdata_version"],
            "package": meta["package"],
            "phase_locks": {
                p: {k: lk[k] for k in ("run_id", "policy_digest", "locked_at") if k in lk} for p, lk in ev.locks.items()
            },
            "run_ids": info["run_ids"],
            "baseline_run_ids": info.get("baseline_run_ids", []),
            "artifacts": {
                p.relative_to(run_root.path).as_posix(): sha256_file(p) for p in sorted(pack.rglob("*")) if p.is_file()
            },
            "retained": pruned["kept_runs"],
            "pruned": pruned["removed_runs"],
            "pruned_datasets": len(pruned["removed_datasets"]),
            "removed_packs": removed_packs,
            "freeze_statement": (
                f"Segment 1B is frozen at pack {pack.name} ({grade['outcome']}): parameter_hash "
                f"{meta['parameter_hash'][:16]}…, code {meta['package']['code_digest'][:16]}…; last_good names it."
            ),
        }
        path = run_root.freeze_record(pack.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, record)  # last: the record exists only for a freeze that finished
    return record
