"""Where the remediation plan stands: every phase's DoD from the evidence under the run root,
in plan order; a phase is judged only once every phase before it is done (§7)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io.discipline import read_optional
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.plan.dod import RUN_PHASES
from seg1b_dask.plan.dod_p0 import p0_items
from seg1b_dask.plan.dod_p5 import p5_items
from seg1b_dask.plan.evidence import Evidence
from seg1b_dask.plan.items import Item, PhaseStatus, subject_run
from seg1b_dask.plan.phases import PHASES

DAMAGE = (KeyError, TypeError, ValueError, IndexError, StopIteration)


def _judged(ev: Evidence, phase: str, judge: Callable[[], PhaseStatus]) -> PhaseStatus:
    """A phase's status, or one failing item naming the damaged record when its evidence
    cannot be read: status still shows every other phase. ``SEG1B_DEBUG=1`` re-raises, for
    a reader that suspects the engine rather than its records."""
    try:
        return judge()
    except Seg1BError as exc:
        if exc.code != Code.E_CORRUPT_FILE or os.environ.get("SEG1B_DEBUG"):
            raise
        problem, where = exc.message, exc.file or "."
        if Path(where).resolve().is_relative_to(ev.root):
            where = ev.rel(Path(where))
    except DAMAGE as exc:
        if os.environ.get("SEG1B_DEBUG"):
            raise
        problem, where = f"{type(exc).__name__}: {exc}", "."
    unreadable = Item(
        "its evidence can be read",
        "fail",
        where,
        problem,
        "restore the damaged record from a backup of the run root, or rerun (SEG1B_DEBUG=1 shows where it broke)",
    )
    return PhaseStatus(phase, None, [unreadable])


def plan_seed(root: Path) -> int | None:
    """The seed the plan runs on: the one its locks were made on (None before any lock)."""
    seeds = {
        int(lock["tokens"]["seed"])
        for phase in PHASES
        if (lock := read_optional(RunRoot(Path(root)).lock_record(phase))) and "tokens" in lock
    }
    return min(seeds) if seeds else None


def status(root: Path, seed: int | None = None, through: str = "P5") -> list[PhaseStatus]:
    """Every phase's DoD from the evidence under ``root``, in plan order, up to ``through``;
    ``seed`` defaults to the plan's (its locks'), else 42."""
    if seed is None:
        locked = plan_seed(root)
        seed = 42 if locked is None else locked
    ev = Evidence(root, seed)
    out = [_judged(ev, "P0", lambda: PhaseStatus("P0", *p0_items(ev)))]
    for phase in [*RUN_PHASES, "P5"]:
        if phase > through:
            break
        if out[-1].state != "done":
            out.append(PhaseStatus(phase, None, waiting=out[-1].phase))
        else:
            out.append(_judged(ev, phase, functools.partial(_phase_status, ev, phase)))
    return out


def _phase_status(ev: Evidence, phase: str) -> PhaseStatus:
    if phase == "P5":
        folders = ev.rr.packs()
        pack = ev.frozen_pack() or (folders[-1] if folders else None)
        if pack is None:
            item = Item("a certification pack", "not yet", "certification/", action="seg1b certify --policies DIR")
            return PhaseStatus("P5", None, [item])
        return PhaseStatus("P5", pack.name, p5_items(ev, pack), closed=ev.rr.freeze_record(pack.name).is_file())
    run_id = subject_run(ev, phase)
    meta = ev.meta(run_id) if run_id else None
    if run_id is None or meta is None:
        holds = f"changes {PHASES[phase]} only" if phase in PHASES else "holds the locked P1–P3 files"
        action = f"seg1b run --seed {ev.seed} --policies DIR (DIR {holds})"
        return PhaseStatus(
            phase, None, [Item("a candidate run of this seed", "not yet", "current_candidate/", action=action)]
        )
    return PhaseStatus(phase, run_id, RUN_PHASES[phase](ev, run_id, meta), closed=ev.locked(phase) is not None)


def next_action(phases: list[PhaseStatus]) -> str:
    for p in phases:
        if p.state not in ("done", "waiting"):
            return f"{p.phase}: {p.next_action}"
    return "none: the plan is complete (P5 frozen)"
