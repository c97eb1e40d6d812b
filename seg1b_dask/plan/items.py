"""The Definition of Done's building blocks: an item and a phase's status, and the items
every run phase shares (scope, code, reopen, reproduction, closure record)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from seg1b_dask.core.text import number
from seg1b_dask.grading import checkpoints
from seg1b_dask.io import packs
from seg1b_dask.io.discipline import read_json
from seg1b_dask.plan.evidence import Evidence, is_locked
from seg1b_dask.plan.phases import PHASE_OF, PHASES, TARGET_POLICY, TITLES

Status = Literal["pass", "fail", "not yet"]


@dataclass(frozen=True)
class Item:
    """One DoD item: its verdict, the file that proves it (relative to the run root), the
    figures behind it and, unless it passes, what to do next."""

    text: str
    status: Status
    evidence: str
    detail: str = ""
    action: str = ""
    blocking: bool = True  # an attempt (P4's B+) is shown but does not hold the phase open
    settled_on_close: bool = False  # done by ``lock`` (reproduction, record) or ``freeze`` itself


@dataclass
class PhaseStatus:
    phase: str
    subject: str | None  # the run or pack judged
    items: list[Item] = field(default_factory=list)
    closed: bool = False  # locked (P1–P3) or frozen (P5); P0 and P4 close when their DoD passes
    waiting: str = ""  # the earlier phase this one waits for

    @property
    def passed(self) -> bool:
        return bool(self.items) and all(i.status == "pass" for i in self.items if i.blocking)

    @property
    def unmet(self) -> list[Item]:
        """What stands between the phase and its close (not what closing does itself)."""
        return [i for i in self.items if i.status != "pass" and i.blocking and not i.settled_on_close]

    @property
    def state(self) -> str:
        if self.waiting:
            return "waiting"
        if self.closed or (self.phase in ("P0", "P4") and self.passed):
            return "done"
        return "ready to close" if self.items and not self.unmet else "open"

    @property
    def next_action(self) -> str:
        return next((i.action for i in self.items if i.status != "pass" and i.blocking), "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "title": TITLES[self.phase],
            "state": self.state,
            "subject": self.subject,
            "waiting": self.waiting,
            "items": [asdict(i) for i in self.items],
        }


def fmt(value: float) -> str:
    return number(value)


def baseline_policies() -> Path:
    from seg1b_dask.chain.runner import BASELINE_POLICIES

    return BASELINE_POLICIES


def subject_run(ev: Evidence, phase: str) -> str | None:
    """The run a phase is judged on: its locked run; for P4 the frozen pack's run of the
    seed; else the current candidate, unless that is an earlier phase's locked run (then
    this phase has no candidate yet)."""
    if (lock := ev.locked(phase)) is not None:
        return str(lock["run_id"])
    if phase == "P4" and (pack := ev.frozen_pack()) is not None:
        frozen = ev.run_of_seed(read_json(packs.pack_json(pack))["run_ids"])
        if frozen:
            return frozen
    candidate = ev.candidate()
    if phase == "P4":  # P3's locked run already holds the three locked files: it may be the integrated one
        return candidate
    earlier = {lock["run_id"] for p, lock in ev.locks.items() if p < phase and is_locked(lock)}
    return None if candidate in earlier else candidate


def scope_problems(ev: Evidence, phase: str, digests: dict[str, str], seed: int) -> list[str]:
    """How ``digests`` break the plan's scope for ``phase`` (P4: the integrated bundle): its
    own file may change; earlier phases' files are their locks'; later phases' files are
    still the baseline's (or a file they locked before a reopen); grid, S3, S8 and the gates
    stay the baseline's throughout."""
    base = ev.baseline_meta(seed)
    wrong = []
    for name, digest in sorted(digests.items()):
        owner = PHASE_OF.get(name)
        if name == TARGET_POLICY or owner == phase:
            continue
        if owner is None:
            if base is not None and digest != base["policy_digests"][name]:
                wrong.append(f"{name} differs from the baseline's")
        elif owner < phase:
            lock = ev.locked(owner)
            if lock is None or digest != lock["policy_digest"]:
                wrong.append(f"{name} is not {owner}'s locked file")
        else:
            record = ev.locks.get(owner) or {}
            allowed = {record.get("policy_digest")} | {p.get("policy_digest") for p in record.get("previous", [])}
            if base is not None and digest != base["policy_digests"][name] and digest not in allowed:
                wrong.append(f"{name} differs from the baseline's ({owner} comes later)")
    return wrong


def scope_item(ev: Evidence, phase: str, meta: dict[str, Any]) -> Item:
    earlier = [p for p in PHASES if p < phase]
    text = f"scope: only {PHASES[phase]} changes" + (f", on the locked {'+'.join(earlier)}" if earlier else "")
    wrong = scope_problems(ev, phase, meta["policy_digests"], meta["seed"])
    return Item(
        text,
        "fail" if wrong else "pass",
        f"runs/{meta['run_id']}/run.json",
        "; ".join(wrong),
        f"run a bundle that differs from the last closed phase's only in {PHASES[phase]}.yaml",
    )


def code_items(ev: Evidence, phase: str, meta: dict[str, Any]) -> list[Item]:
    """An open phase's candidate must be this code's: ``lock`` reproduces it with this code."""
    from seg1b_dask.chain.runner import code_digest

    if ev.locked(phase):
        return []
    same = meta["package"]["code_digest"] == code_digest()
    return [
        Item(
            "made by this package's code (the lock reproduces it)",
            "pass" if same else "fail",
            f"runs/{meta['run_id']}/run.json",
            "" if same else f"package {meta['package']['version']}, code {meta['package']['code_digest'][:12]}…",
            "run the same bundle again with this package (the cache makes it quick)",
        )
    ]


def contradicted_digests(record: dict[str, Any] | None) -> dict[str, str]:
    """Policy digests of a phase that a reopen contradicted (not those reopened only because
    an upstream phase was): digest -> the evidence run."""
    out = {}
    for lock in [record or {}, *(record or {}).get("previous", [])]:  # earlier records were reopened ones
        last = (lock.get("reopened") or [{}])[-1]
        if lock.get("state") == "reopened" and last and not last.get("cascade"):
            out[lock["policy_digest"]] = last["evidence_run"]
    return out


def not_contradicted(ev: Evidence, phase: str, meta: dict[str, Any]) -> list[Item]:
    """An open phase may not close again on the very file a reopen contradicted."""
    if ev.locked(phase) or phase not in ev.locks:  # locked, or never locked: nothing contradicted yet
        return []
    policy = PHASES[phase]
    against = contradicted_digests(ev.locks.get(phase)).get(meta["policy_digests"][policy])
    return [
        Item(
            f"not the {policy} a reopen contradicted",
            "fail" if against else "pass",
            f"locks/{phase}.json",
            f"reopened on the evidence of run {against}" if against else "",
            f"change {policy}.yaml: the contradicting run's diagnose says where (seg1b diagnose {against})",
        )
    ]


def repro_item(phase: str, run_id: str, record: dict[str, Any] | None) -> Item:
    text = "two same-seed runs reproduce byte for byte"
    evidence = f"reports/repro-{run_id}.json"
    if record is None:
        action = f"seg1b lock {phase} {run_id} (runs the check itself)"
        return Item(text, "not yet", evidence, action=action, settled_on_close=True)
    return Item(
        text,
        "pass" if record["identical"] else "fail",
        evidence,
        f"{len(record['datasets'])} datasets recomputed from scratch in {record['seconds']:.1f} s",
        "outputs differ between two runs of one seed: a determinism bug; report it",
        settled_on_close=True,
    )


def lock_item(ev: Evidence, phase: str, run_id: str) -> Item:
    lock = ev.locks.get(phase)
    text = f"{phase} closure record written (policy, tokens, evidence, metric snapshot)"
    evidence = f"locks/{phase}.json"
    if is_locked(lock) and lock["run_id"] == run_id:
        return Item(text, "pass", evidence, f"locked {lock.get('locked_at', '')}", settled_on_close=True)
    detail = f"reopened: {lock['reopened'][-1]['reason']}" if lock and lock.get("reopened") else ""
    return Item(text, "not yet", evidence, detail, f"seg1b lock {phase} {run_id}", settled_on_close=True)


def versus(new: dict[str, float], old: dict[str, float], keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k.replace('_share', '')} {fmt(new[k])} vs {fmt(old[k])}" for k in keys)


def no_checkpoints(run_id: str) -> Item:
    return Item(
        f"checkpoints of run {run_id} present",
        "fail",
        f"runs/{run_id}/{checkpoints.FOLDER}/checkpoints.json",
        action=f"seg1b diagnose {run_id} (writes them)",
    )
