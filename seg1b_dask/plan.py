"""The remediation plan as a workflow (seed plan §5–§7): every phase's Definition of Done
evaluated from the evidence under the run root, closure records, reopening, freezing.

- P0 baseline authority: the seed's pinned baseline, its scorecard, its checkpoints.
- P1 S2 reshape, P2 S4 allocation, P3 S6 geometry: each judged on its candidate run (the
  locked run once locked, else the current candidate), each changing only its own policy
  file on top of the phases before it, closed by ``lock`` (which checks the DoD and
  reproduces the run byte for byte first).
- P4 the integrated candidate: all three locked policies together, B on its seed.
- P5 a certification pack: GREEN on every required seed, closed by ``freeze``.

Phases run in order (§7): a phase is judged only once every phase before it is done.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import checkpoints, discipline, grading
from .discipline import PHASES, read_json
from .errors import Code, Seg1BError
from .execution import Execution
from .lineage import read_manifest, safe_join, stage_path, write_json
from .policies import load_bundle, sealed_bundle
from .refdata import refdata_version
from .runroot import RunRoot

Status = Literal["pass", "fail", "not yet"]
STATE_OF = {"P1": "S2", "P2": "S4", "P3": "S8"}  # where each locked phase's shape is measured
TITLES = {
    "P0": "baseline authority and checkpoints",
    "P1": "S2 macro-mass reshape",
    "P2": "S4 integer allocation",
    "P3": "S6 geometry",
    "P4": "integrated candidate",
    "P5": "certification and freeze",
}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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
    settled_by_lock: bool = False  # what ``lock`` (the reproducibility check, the record) or ``freeze`` does


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
    def state(self) -> str:
        if self.waiting:
            return "waiting"
        if self.closed or (self.phase in ("P0", "P4") and self.passed):
            return "done"
        ready = bool(self.items) and all(i.status == "pass" for i in self.items if i.blocking and not i.settled_by_lock)
        return "ready to close" if ready else "open"

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


class Evidence:
    """What the run root holds, read once: pins, runs, scorecards, checkpoints, locks, packs."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = Path(root).resolve()
        self.rr = RunRoot(self.root)
        self.seed = seed
        self.pin = discipline.baseline_pointer(self.root, seed)
        self.locks = {
            p: discipline.read_json(self.rr.lock_record(p)) for p in PHASES if self.rr.lock_record(p).is_file()
        }
        self._meta: dict[str, dict[str, Any] | None] = {}

    def rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.root).as_posix()

    def meta(self, run_id: str) -> dict[str, Any] | None:
        if run_id not in self._meta:
            folder = self.rr.run(run_id)
            self._meta[run_id] = discipline.load_run(folder) if (folder / "run.json").is_file() else None
        return self._meta[run_id]

    def card(self, run_id: str) -> dict[str, Any] | None:
        path = self.rr.run(run_id) / "scorecard" / "scorecard.json"
        return read_json(path) if path.is_file() else None

    def profiles(self, run_id: str) -> dict[str, checkpoints.Profile] | None:
        return checkpoints.read(self.rr.run(run_id))

    def locked(self, phase: str) -> dict[str, Any] | None:
        lock = self.locks.get(phase)
        return lock if lock and lock.get("state", "locked") == "locked" else None

    def candidate(self) -> str | None:
        """The current candidate run of this seed (a promoted pack's run of the seed)."""
        pointer = discipline.get_pointer(self.root, "current_candidate") or {}
        ids = [pointer["run_id"]] if "run_id" in pointer else list(pointer.get("run_ids", []))
        return next((r for r in ids if (m := self.meta(r)) is not None and m["seed"] == self.seed), None)

    def repro(self, run_id: str) -> dict[str, Any] | None:
        path = self.rr.path / "reports" / f"repro-{run_id}.json"
        return read_json(path) if path.is_file() else None


# -- DoD items ----------------------------------------------------------------------


def _f(value: float) -> str:
    return f"{value:.4f}"


def p0_items(ev: Evidence) -> tuple[str | None, list[Item]]:
    seed = ev.seed
    pin_file = ev.rel(ev.rr.pin(seed)) if ev.rr.pin(seed).is_file() else f"baseline_authority/seed={seed}.json"
    if ev.pin is None:
        return None, [
            Item(
                f"baseline of seed {seed} pinned, its lineage tokens equal its run's",
                "not yet",
                pin_file,
                action=f"seg1b baseline --seed {seed}",
            )
        ]
    run_id = ev.pin["run_id"]
    meta = ev.meta(run_id)
    folder = ev.rr.run(run_id)
    tokens = ("run_id", "seed", "parameter_hash", "manifest_fingerprint")
    bad = [k for k in tokens if meta is None or meta[k] != ev.pin[k]]
    items = [
        Item(
            f"baseline of seed {seed} pinned, its lineage tokens equal its run's",
            "fail" if bad else "pass",
            pin_file,
            f"run {run_id}" if not bad else f"run.json missing or differing in {', '.join(bad)}",
            "the pinned run is damaged: restore it from a backup of the run root" if bad else "",
        )
    ]
    card = ev.card(run_id)
    tables = ("scorecard.json", "country_shares.csv", "region_shares.csv", "nn_quantiles.csv")
    missing = [t for t in tables if not (folder / "scorecard" / t).is_file()]
    stored = card is not None and not missing and (card.get("baseline") or {}).get("run_id") == run_id
    items.append(
        Item(
            "baseline scorecard and companion tables stored (country, region, NN quantiles)",
            "pass" if stored else "fail",
            ev.rel(folder) + "/scorecard/",
            (
                f"Gini {_f(card['metrics']['country_gini'])}, top1 {_f(card['metrics']['top1_share'])}, "
                f"nn_ratio {card['metrics']['nn_ratio']:.3f}; its grade {card['grade_single_seed']['outcome']}"
            )
            if stored and card
            else f"missing: {', '.join(missing) or 'the pin in scorecard.json'}",
            f"seg1b score {run_id}",
        )
    )
    profiles = ev.profiles(run_id)
    items.append(
        Item(
            "S2 / S4 / S8 checkpoints of the baseline captured",
            "pass" if profiles else "fail",
            ev.rel(folder) + f"/{checkpoints.FOLDER}/",
            "country mass, post-integerization and site profiles, NN tail, sentinel" if profiles else "",
            f"seg1b diagnose {run_id} (writes the checkpoints of a run made before they existed)",
        )
    )
    legacy = load_bundle(_baseline_policies(), refdata_version()).parameter_hash
    items.append(
        Item(
            "the authority is the legacy posture (the shipped baseline bundle)",
            "pass" if meta and meta["parameter_hash"] == legacy else "fail",
            ev.rel(folder) + "/run.json",
            f"bundle {meta['policy_bundle']}" if meta else "",
            "pin a run of policies/baseline: the pin of a seed is permanent, start a new run root",
        )
    )
    return run_id, items


def _baseline_policies() -> Path:
    from .runner import BASELINE_POLICIES

    return BASELINE_POLICIES


def _subject(ev: Evidence, phase: str) -> str | None:
    """The run a phase is judged on: its locked run, else the current candidate unless that
    is an earlier phase's locked run (then this phase has no candidate yet)."""
    lock = ev.locked(phase)
    if lock:
        return str(lock["run_id"])
    candidate = ev.candidate()
    earlier = {ev.locks[p]["run_id"] for p in ev.locks if p < phase and ev.locked(p)}
    return None if candidate in earlier else candidate


def _scope(ev: Evidence, phase: str, meta: dict[str, Any]) -> Item:
    """The plan's scope boundary: a phase changes its own policy file on top of the locked
    phases before it; the later phases' files are still the baseline's."""
    base = ev.meta(ev.pin["run_id"]) if ev.pin else None
    wrong = []
    for other, policy in PHASES.items():
        if other == phase:
            continue
        if other < phase:
            lock = ev.locked(other)
            if lock is None or meta["policy_digests"][policy] != lock["policy_digest"]:
                wrong.append(f"{policy} is not {other}'s locked file")
        elif base is not None and meta["policy_digests"][policy] != base["policy_digests"][policy]:
            wrong.append(f"{policy} differs from the baseline's ({other} comes later)")
    earlier = [p for p in PHASES if p < phase]
    text = f"scope: only {PHASES[phase]} changes" + (f", on the locked {'+'.join(earlier)}" if earlier else "")
    return Item(
        text,
        "fail" if wrong else "pass",
        f"runs/{meta['run_id']}/run.json",
        "; ".join(wrong),
        f"run a bundle that differs from the last closed phase's only in {PHASES[phase]}.yaml",
    )


def _repro_item(ev: Evidence, phase: str, run_id: str) -> Item:
    record = ev.repro(run_id)
    evidence = f"reports/repro-{run_id}.json"
    if record is None:
        return Item(
            "two same-seed runs reproduce byte for byte",
            "not yet",
            evidence,
            action=f"seg1b lock {phase} {run_id} (runs the check itself)",
            settled_by_lock=True,
        )
    return Item(
        "two same-seed runs reproduce byte for byte",
        "pass" if record["identical"] else "fail",
        evidence,
        f"{len(record['datasets'])} datasets recomputed from scratch in {record['seconds']:.1f} s",
        "outputs differ between two runs of one seed: a determinism bug; report it",
        settled_by_lock=True,
    )


def _lock_item(ev: Evidence, phase: str, run_id: str) -> Item:
    lock = ev.locks.get(phase)
    text = f"{phase} closure record written (policy, tokens, evidence, metric snapshot)"
    if lock and lock.get("state", "locked") == "locked" and lock["run_id"] == run_id:
        return Item(text, "pass", f"locks/{phase}.json", f"locked {lock.get('locked_at', '')}", settled_by_lock=True)
    detail = f"reopened: {lock['reopened'][-1]['reason']}" if lock and lock.get("reopened") else ""
    return Item(text, "not yet", f"locks/{phase}.json", detail, f"seg1b lock {phase} {run_id}", settled_by_lock=True)


def _concentration_detail(new: dict[str, float], old: dict[str, float], keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k.replace('_share', '')} {_f(new[k])} vs {_f(old[k])}" for k in keys)


def p1_items(ev: Evidence, run_id: str, meta: dict[str, Any]) -> list[Item]:
    bundle = sealed_bundle(meta)
    hints = grading.triage_hints(bundle)
    mode = bundle.s2_tile_weights.tile_weights.mode
    profiles = ev.profiles(run_id)
    base_card = ev.card(ev.pin["run_id"]) if ev.pin else None
    base_profiles = ev.profiles(ev.pin["run_id"]) if ev.pin else None
    folder = f"runs/{run_id}"
    items = [
        _scope(ev, "P1", meta),
        Item(
            "S2 runs the governed mode blend_v2 (legacy kept as a mode)",
            "pass" if mode == "blend_v2" else "fail",
            f"{folder}/run.json",
            f"s2_tile_weights tile_weights.mode {mode}",
            "set s2_tile_weights.yaml tile_weights.mode: blend_v2 (policies/remediation has one)",
        ),
        Item(
            "S2 emits its country and region diagnostics",
            "pass" if profiles else "fail",
            f"{folder}/{checkpoints.FOLDER}/checkpoints.json",
            action=f"seg1b diagnose {run_id}",
        ),
    ]
    if profiles and base_card and base_profiles:
        s2 = profiles["S2"].figures
        base = base_card["metrics"]
        keys = grading.CONCENTRATION
        better = all(s2[k] < base[k] for k in keys)
        items.append(
            Item(
                "concentration improves vs P0 on Gini, top1, top5, top10 (S2 mass vs the baseline scorecard)",
                "pass" if better else "fail",
                f"{folder}/{checkpoints.FOLDER}/checkpoints.json",
                _concentration_detail(s2, base, keys),
                hints["concentration"],
            )
        )
        gates = bundle.gates
        new = _region_breaches(profiles["S2"], gates) - _region_breaches(base_profiles["S2"], gates)
        items.append(
            Item(
                "no new region-floor breach in S2's diagnostics (vs the baseline's S2)",
                "fail" if new else "pass",
                f"{folder}/{checkpoints.FOLDER}/checkpoints.json",
                "new: " + ", ".join(sorted(new)) if new else "",
                hints["region_floor"],
            )
        )
    return [*items, _repro_item(ev, "P1", run_id), _lock_item(ev, "P1", run_id)]


def _region_breaches(profile: checkpoints.Profile, gates: Any) -> set[str]:
    return {r for r, floor in gates.region_floor_share.items() if profile.region_share.get(r, 0.0) < floor}


def p2_items(ev: Evidence, run_id: str, meta: dict[str, Any]) -> list[Item]:
    bundle = sealed_bundle(meta)
    hints = grading.triage_hints(bundle)
    profiles = ev.profiles(run_id)
    p1 = ev.locked("P1")
    before = ev.profiles(p1["run_id"]) if p1 else None
    folder = f"runs/{run_id}/{checkpoints.FOLDER}/checkpoints.json"
    items = [_scope(ev, "P2", meta)]
    if profiles and before:
        new, old = profiles["S4"].figures, before["S4"].figures
        keys = grading.CONCENTRATION
        coverage = "eligible_country_nonzero_share"
        improved = new["country_gini"] < old["country_gini"] and all(new[k] <= old[k] for k in keys)
        improved = improved and new[coverage] >= old[coverage]
        items.append(
            Item(
                "post-S4 concentration and coverage improve vs the pre-P2 posture (P1's run at S4)",
                "pass" if improved else "fail",
                folder,
                _concentration_detail(new, old, keys) + f", coverage {_f(new[coverage])} vs {_f(old[coverage])}",
                hints["concentration"],
            )
        )
        breaches = _reconcentration(profiles, bundle.gates)
        items.append(
            Item(
                "no reconcentration breach by integerization (every B gate passing at S2 passes at S4)",
                "fail" if breaches else "pass",
                folder,
                "; ".join(breaches),
                "retune s4_alloc_plan country_allocation.fidelity_weight, max_share_of_need, min_sites_per_country",
            )
        )
    elif profiles is None:
        items.append(Item("S4 checkpoint captured", "fail", folder, action=f"seg1b diagnose {run_id}"))
    return [*items, _repro_item(ev, "P2", run_id), _lock_item(ev, "P2", run_id)]


def _reconcentration(profiles: dict[str, checkpoints.Profile], gates: Any) -> list[str]:
    """Country gates (B) that pass on S2's mass vector and fail on S4's integer counts."""
    rows = {
        s: {r["gate"]: r for r in grading.gate_table(checkpoints._stage_card(profiles[s]), gates, "B", None)}
        for s in ("S2", "S4")
    }
    out = []
    for gate, row in rows["S4"].items():
        if not checkpoints._measured(gate, "S2") or gate not in rows["S2"]:
            continue
        if rows["S2"][gate]["passed"] and not row["passed"]:
            out.append(f"{gate} {_f(rows['S2'][gate]['observed'])} at S2, {_f(row['observed'])} at S4")
    return out


def p3_items(ev: Evidence, run_id: str, meta: dict[str, Any]) -> list[Item]:
    bundle = sealed_bundle(meta)
    hints = grading.triage_hints(bundle)
    card = ev.card(run_id)
    folder = f"runs/{run_id}"
    items = [_scope(ev, "P3", meta)]
    if card is None:
        return [*items, Item("the run is scored", "fail", f"{folder}/scorecard/", action=f"seg1b score {run_id}")]
    m = card["metrics"]
    floor = bundle.gates.nn_contraction_min.B
    contraction = m["nn_contraction"]
    items.append(
        Item(
            f"nearest-neighbour tail contracts by at least {floor:.0%} vs the baseline (B floor)",
            "pass" if contraction >= floor else "fail",  # NaN (no baseline) fails
            f"{folder}/scorecard/nn_quantiles.csv",
            f"nn_contraction {_f(contraction)}: p99/p50 {m['nn_ratio']:.3f} vs {m['baseline_nn_ratio']:.3f}",
            hints["nn"],
        )
    )
    flagged = [c for c, s in card.get("sentinel", {}).items() if s["flagged"]]
    items.append(
        Item(
            "no stripe or corridor collapse on the top-volume countries (sentinel clear)",
            "pass" if m["sentinel_flagged"] <= bundle.gates.sentinel_flagged_max.B else "fail",
            f"{folder}/scorecard/sentinel.csv",
            f"flagged: {', '.join(flagged)}" if flagged else f"0 of {len(card.get('sentinel', {}))} flagged",
            hints["collapse"],
        )
    )
    s7 = next(s["stats"] for s in meta["states"] if s["id"] == "S7")
    s9 = next(s["stats"] for s in meta["states"] if s["id"] == "S9")
    valid = s7["inside_tile"] == 1.0 and s7["inside_country"] == 1.0 and not s9["failed_checks"]
    items.append(
        Item(
            "coordinates 100 % valid, every site inside its tile and country",
            "pass" if valid else "fail",
            f"{folder}/run.json",
            f"inside tile {s7['inside_tile']}, inside country {s7['inside_country']}, "
            f"S9 failed checks: {', '.join(s9['failed_checks']) or 'none'}",
            hints["structural"],
        )
    )
    return [*items, _repro_item(ev, "P3", run_id), _lock_item(ev, "P3", run_id)]


def p4_items(ev: Evidence, run_id: str, meta: dict[str, Any]) -> list[Item]:
    folder = f"runs/{run_id}"
    drift = [p for p, policy in PHASES.items() if meta["policy_digests"][policy] != ev.locks[p]["policy_digest"]]
    items = [
        Item(
            "the integrated candidate runs the locked P1 + P2 + P3 policies",
            "fail" if drift else "pass",
            f"{folder}/run.json",
            f"differs from the lock of {', '.join(drift)}" if drift else "",
            "run the bundle holding the three locked files (seg1b run --policies DIR)",
        )
    ]
    card = ev.card(run_id)
    if card is None:
        return [*items, Item("the candidate is scored", "fail", f"{folder}/scorecard/", action=f"seg1b score {run_id}")]
    grade = card["grade_single_seed"]
    for level, blocking in (("B", True), ("B_PLUS", False)):
        failing = sorted({f["gate"] for f in grade["failures"][level]})
        hints = grading.triage_hints(sealed_bundle(meta))
        action = grading.triage([grading.Failure(**f) for f in grade["failures"][level]], hints)
        items.append(
            Item(
                f"every {'B hard' if level == 'B' else 'B+ (attempt)'} gate passes on the candidate's seed",
                "fail" if failing and blocking else ("not yet" if failing else "pass"),
                f"{folder}/scorecard/scorecard.json",
                (f"failing: {', '.join(failing)}" if failing else f"single-seed grade {grade['outcome']}")
                + f"; relocated_share {_f(card['fidelity']['relocated_share'])}",
                action if failing else "",
                blocking,
            )
        )
    reopened = [f"{p}: {r['reason']}" for p, lock in ev.locks.items() for r in lock.get("reopened", [])]
    items.append(
        Item(
            "no locked phase needed reopening for a data-shape contradiction",
            "fail" if reopened else "pass",
            "locks/",
            "; ".join(reopened),
            "re-close the reopened phase (seg1b lock) and rerun the integrated candidate",
        )
    )
    return items


def _pack(ev: Evidence) -> Path | None:
    """The pack P5 judges: the one ``last_good`` names if frozen, else the newest pack."""
    last = discipline.get_pointer(ev.root, "last_good") or {}
    if last.get("frozen") and (ev.rr.certification / last["pack_id"]).is_dir():
        return ev.rr.certification / last["pack_id"]
    packs = sorted(p.parent for p in ev.rr.certification.glob("*/pack.json")) if ev.rr.certification.is_dir() else []
    return packs[-1] if packs else None


def freeze_record_path(rr: RunRoot, pack_id: str) -> Path:
    return rr.path / "reports" / f"freeze-{pack_id}.json"


def p5_items(ev: Evidence, pack: Path) -> list[Item]:
    grade = read_json(pack / "grade.json")
    info = read_json(pack / "pack.json")
    folder = ev.rel(pack)
    outcome = grade["outcome"]
    claimed: grading.Level = "B_PLUS" if outcome == "GREEN_BPLUS" else "B"
    items = [
        Item(
            "hard gates pass on every required seed (B, or B+ when claimed)",
            "pass" if outcome != "RED" else "fail",
            f"{folder}/grade.json",
            f"{outcome} on seeds {', '.join(map(str, grade['seeds']))}"
            + (f"; missing {grade['missing_seeds']}" if grade["missing_seeds"] else "")
            + f"; relocated_share {_relocated(pack)}",
            grade.get("next_action", ""),
        )
    ]
    cv_fail = [f["gate"] for f in grade["failures"][claimed] if f["gate"].startswith("cv:")]
    worst = max(grade["cv"].items(), key=lambda kv: kv[1], default=("–", 0.0))
    items.append(
        Item(
            f"stability: every core-metric CV within the claimed grade ({claimed.replace('_PLUS', '+')})",
            "fail" if cv_fail else "pass",
            f"{folder}/cv.csv",
            f"largest CV {worst[0]} {_f(worst[1])}" + (f"; failing {', '.join(cv_fail)}" if cv_fail else ""),
            grading.triage_hints()["cv"],
        )
    )
    digests = info.get("policy_digests", {})
    drift = [p for p, policy in PHASES.items() if digests.get(policy) != ev.locks[p]["policy_digest"]]
    items.append(
        Item(
            "the certified bundle holds the locked P1 + P2 + P3 policies",
            "fail" if drift else "pass",
            f"{folder}/pack.json",
            f"differs from the lock of {', '.join(drift)}" if drift else "",
            "certify the integrated candidate's bundle (seg1b certify --policies DIR)",
        )
    )
    record_path = freeze_record_path(ev.rr, pack.name)
    record = read_json(record_path) if record_path.is_file() else None
    items.append(
        Item(
            "final lock set recorded (policy files, code digest, scorecards, reports)",
            "pass" if record else "not yet",
            ev.rel(record_path) if record else f"reports/freeze-{pack.name}.json",
            f"frozen {record['frozen_at']}" if record else "",
            f"seg1b freeze {pack.name}",
            settled_by_lock=True,
        )
    )
    superseded = sorted(set(_run_ids(ev.rr)) - set(discipline.referenced_runs(ev.root)))
    items.append(
        Item(
            "superseded runs pruned, the retained ones listed",
            "pass" if record and not superseded else ("fail" if record else "not yet"),
            ev.rel(record_path) if record else f"reports/freeze-{pack.name}.json",
            f"{len(record['retained'])} retained" + (f"; {len(superseded)} superseded since" if superseded else "")
            if record
            else "",
            "seg1b prune" if record else f"seg1b freeze {pack.name} (prunes)",
            settled_by_lock=record is None,
        )
    )
    return items


def _relocated(pack: Path) -> str:
    """The price every grade is reported beside: the pack's range of ``relocated_share``."""
    shares = sorted(read_json(card)["fidelity"]["relocated_share"] for card in pack.glob("seeds/seed=*/scorecard.json"))
    return f"{_f(shares[0])}–{_f(shares[-1])}" if shares else "–"


def _run_ids(rr: RunRoot) -> list[str]:
    return sorted(p.name for p in rr.runs.glob("*") if (p / "run.json").is_file()) if rr.runs.is_dir() else []


# -- status -------------------------------------------------------------------------

ItemsOf = Callable[[Evidence, str, dict[str, Any]], list[Item]]
RUN_PHASES: dict[str, ItemsOf] = {"P1": p1_items, "P2": p2_items, "P3": p3_items, "P4": p4_items}


def status(root: Path, seed: int = 42) -> list[PhaseStatus]:
    """Every phase's DoD from the evidence under ``root``, in plan order."""
    ev = Evidence(root, seed)
    subject, items = p0_items(ev)
    out = [PhaseStatus("P0", subject, items)]
    for phase, items_of in RUN_PHASES.items():
        previous = out[-1]
        if previous.state != "done":
            out.append(PhaseStatus(phase, None, waiting=previous.phase))
            continue
        run_id = _subject(ev, phase)
        meta = ev.meta(run_id) if run_id else None
        if run_id is None or meta is None:
            action = f"seg1b run --seed {seed} --policies DIR (DIR changes {PHASES.get(phase, 'nothing')} only)"
            if phase == "P4":
                action = f"seg1b run --seed {seed} --policies DIR (DIR holds the locked P1–P3 files)"
            out.append(
                PhaseStatus(
                    phase, None, [Item("a candidate run of this seed", "not yet", "current_candidate/", action=action)]
                )
            )
            continue
        out.append(PhaseStatus(phase, run_id, items_of(ev, run_id, meta), closed=ev.locked(phase) is not None))
    if out[-1].state != "done":
        out.append(PhaseStatus("P5", None, waiting=out[-1].phase))
        return out
    pack = _pack(ev)
    if pack is None:
        item = Item("a certification pack", "not yet", "certification/", action="seg1b certify --policies DIR")
        out.append(PhaseStatus("P5", None, [item]))
        return out
    items = p5_items(ev, pack)
    record = freeze_record_path(ev.rr, pack.name)
    out.append(PhaseStatus("P5", pack.name, items, closed=record.is_file()))
    return out


def next_action(phases: list[PhaseStatus]) -> str:
    for p in phases:
        if p.state not in ("done", "waiting"):
            return f"{p.phase}: {p.next_action}"
    return "none: the plan is complete (P5 frozen)"


# -- closure ------------------------------------------------------------------------

FREEZE_STATEMENT = (
    "{phase} ({state}: {policy}.yaml, digest {digest}) is locked; downstream phases must treat this "
    "policy and its shape as immutable unless an explicit reopen with a reason and contradicting evidence is recorded."
)


def lock(root: Path, phase: str, run: Path, execution: Execution) -> dict[str, Any]:
    """Close ``phase`` at ``run``: refused unless its DoD passes (the reproducibility check
    is run here, from scratch); writes the plan's closure record."""
    if phase not in PHASES:
        raise Seg1BError(Code.E_UNKNOWN_PHASE, f"phases to lock are {', '.join(PHASES)}", key=phase)
    meta = discipline.load_run(run, needs=("states", "policies", "policy_digests"))
    ev = Evidence(root, meta["seed"])
    existing = ev.locks.get(phase)
    if existing and existing.get("state", "locked") == "locked":
        raise Seg1BError(
            Code.E_PHASE_LOCKED,
            f"{phase} is already locked by run {existing['run_id']}; reopen it with evidence first (seg1b reopen)",
            file=ev.rr.lock_record(phase),
        )
    phases = status(root, meta["seed"])
    before = next(p for p in phases if p.phase == phase)
    if before.waiting:
        raise Seg1BError(
            Code.E_DOD_FAILED,
            f"{phase} waits for {before.waiting}: close the phases in order (seg1b status)",
            file=ev.rr.lock_record(before.waiting) if before.waiting in PHASES else None,
        )
    judged = RUN_PHASES[phase](ev, meta["run_id"], meta)
    unmet = [i for i in judged if i.status != "pass" and i.blocking and not i.settled_by_lock]
    if unmet:
        first = unmet[0]
        raise Seg1BError(
            Code.E_DOD_FAILED,
            f"{phase} DoD not met on run {meta['run_id']}: "
            + "; ".join(f"{i.text} ({i.status}{': ' + i.detail if i.detail else ''})" for i in unmet),
            file=safe_join(ev.root, first.evidence) if not first.evidence.endswith("/") else None,
        )
    record = reproduce(root, run, execution)
    if not record["identical"]:
        raise Seg1BError(
            Code.E_NOT_REPRODUCIBLE,
            f"run {meta['run_id']} did not reproduce: {', '.join(record['differing'])}",
            file=ev.rr.path / "reports" / f"repro-{meta['run_id']}.json",
        )
    profiles = ev.profiles(meta["run_id"])
    card = ev.card(meta["run_id"]) or {}
    policy = PHASES[phase]
    closure = {
        "phase": phase,
        "state": "locked",
        "policy": policy,
        "policy_digest": meta["policy_digests"][policy],
        "policy_file": meta["policies"][policy],
        "locked_at": _now(),
        "run_id": meta["run_id"],
        "tokens": {k: meta[k] for k in ("run_id", "seed", "parameter_hash", "manifest_fingerprint")},
        "evidence": {
            "run": f"runs/{meta['run_id']}/run.json",
            "scorecard": f"runs/{meta['run_id']}/scorecard/scorecard.json",
            "checkpoints": f"runs/{meta['run_id']}/{checkpoints.FOLDER}/checkpoints.json",
            "reproducibility": f"reports/repro-{meta['run_id']}.json",
        },
        "dod": [asdict(i) for i in judged if not i.settled_by_lock]
        + [asdict(_repro_item(Evidence(root, meta["seed"]), phase, meta["run_id"]))],
        "accepted_metrics": {
            "scorecard": card.get("metrics", {}),
            STATE_OF[phase]: profiles[STATE_OF[phase]].as_dict() if profiles else {},
        },
        "freeze_statement": FREEZE_STATEMENT.format(
            phase=phase, state=STATE_OF[phase].replace("S8", "S6"), policy=policy, digest=meta["policy_digests"][policy]
        ),
        "reopened": existing.get("reopened", []) if existing else [],
        "previous": ([{k: v for k, v in existing.items() if k != "previous"}] + existing.get("previous", []))
        if existing
        else [],
    }
    ev.rr.locks.mkdir(parents=True, exist_ok=True)
    write_json(ev.rr.lock_record(phase), closure)
    return closure


def reproduce(root: Path, run: Path, execution: Execution) -> dict[str, Any]:
    """Run ``run``'s seed again from scratch (a fresh run root, no cache) under its sealed
    policies and compare every dataset's content digest; the record lands in ``reports/``."""
    from .runner import code_digest, run_seed

    meta = discipline.load_run(run, needs=("states", "policies", "upstream", "baseline_nn_ratio", "package"))
    if meta["package"]["code_digest"] != code_digest():  # the fingerprint seals the code: it could not match
        raise Seg1BError(
            Code.E_DOD_FAILED,
            f"run {meta['run_id']} was made by other code (package {meta['package']['version']}, digest "
            f"{meta['package']['code_digest'][:12]}…): run its bundle again with this package and lock that run",
            file=run / "run.json",
            key="package.code_digest",
        )
    rr = RunRoot(Path(root).resolve())
    reports = rr.path / "reports"
    reports.mkdir(exist_ok=True)
    scratch = stage_path(reports / f"repro-{meta['run_id']}")
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
        "checked_at": _now(),
        "seconds": round(time.perf_counter() - started, 2),
        "identical": not differing,
        "differing": differing,
        "datasets": datasets,
    }
    write_json(reports / f"repro-{meta['run_id']}.json", record)
    return record


def check_locks(root: Path, digests: dict[str, str]) -> list[dict[str, Any]]:
    """Refuse a bundle that changes a locked policy (a reopened phase no longer binds).
    Returns the locks in force."""
    rr = RunRoot(Path(root))
    in_force = []
    for phase, policy in PHASES.items():
        path = rr.lock_record(phase)
        lock = read_json(path) if path.is_file() else None
        if lock is None or lock.get("state", "locked") != "locked":
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


def reopen(root: Path, phase: str, reason: str, evidence: Path) -> dict[str, Any]:
    """Reopen a locked phase: needs a reason and a run, made under the lock, whose
    checkpoints show a gate first going wrong at the phase's state. Both are recorded."""
    rr = RunRoot(Path(root).resolve())
    path = rr.lock_record(phase)
    lock = read_json(path) if path.is_file() else None
    if lock is None or lock.get("state", "locked") != "locked":
        raise Seg1BError(Code.E_UNKNOWN_PHASE, f"{phase} is not locked", file=path, key=phase)
    if not reason.strip():
        raise Seg1BError(Code.E_REOPEN_REFUSED, "a reopen needs a reason (--reason)", file=path, key=phase)
    meta = discipline.load_run(evidence, needs=("policy_digests",))
    if meta["policy_digests"][lock["policy"]] != lock["policy_digest"]:
        raise Seg1BError(
            Code.E_REOPEN_REFUSED,
            f"run {meta['run_id']} was not made under {phase}'s locked {lock['policy']}: it cannot contradict it",
            file=evidence / "run.json",
            key=lock["policy"],
        )
    found = checkpoints.diagnose(rr.path, evidence)
    state = STATE_OF[phase]
    contradicting = [t for t in found.failing if t.first_wrong == state]
    if not contradicting:
        failing = ", ".join(f"{t.gate} at {t.first_wrong}" for t in found.failing) or "no gate fails"
        raise Seg1BError(
            Code.E_REOPEN_REFUSED,
            f"run {meta['run_id']} shows no gate first going wrong at {state} ({failing}): no contradiction of {phase}",
            file=evidence / "run.json",
            key=phase,
        )
    lock["state"] = "reopened"
    lock.setdefault("reopened", []).append(
        {
            "at": _now(),
            "reason": reason.strip(),
            "evidence_run": meta["run_id"],
            "contradiction": [
                f"{t.gate} first wrong at {state}: {_f(t.run[state])} vs threshold {_f(t.threshold)} ({found.level})"
                for t in contradicting
            ],
        }
    )
    write_json(path, lock)
    return lock


# -- freeze -------------------------------------------------------------------------


def pack_dir(root: Path, ref: str) -> Path:
    rr = RunRoot(Path(root).resolve())
    candidate = Path(ref)
    folder = candidate.resolve() if candidate.is_absolute() or candidate.exists() else rr.certification / ref
    folder = safe_join(rr.path, folder)
    if not (folder / "pack.json").is_file():
        raise Seg1BError(Code.E_UNKNOWN_RUN, "no certification pack by this id or folder", key=ref)
    return folder


def freeze(root: Path, pack: Path) -> dict[str, Any]:
    """P5: make a GREEN pack the authority. Records the final lock set, points
    ``last_good`` at the pack, prunes superseded runs and lists what it retained. Holds the
    run root alone (refused while a run is in flight)."""
    from .hashing import sha256_file

    run_root = RunRoot.open(root)
    grade = read_json(pack / "grade.json")
    if grade["outcome"] == "RED":
        failing = sorted({f["gate"] for f in grade["failures"]["B"]})
        raise Seg1BError(
            Code.E_FREEZE_REFUSED,
            f"only a GREEN pack can be frozen; this one is RED ({', '.join(failing)})",
            file=pack / "grade.json",
        )
    info = read_json(pack / "pack.json")
    first = run_root.run(info["run_ids"][0])
    meta = discipline.load_run(first, needs=("policies", "policy_digests", "package"))
    with run_root.exclusive():
        files = sorted(p for p in pack.rglob("*") if p.is_file())
        record = {
            "pack_id": pack.name,
            "frozen_at": _now(),
            "grade": grade["outcome"],
            "seeds": grade["seeds"],
            "content_sha256": info.get("content_sha256"),
            "parameter_hash": meta["parameter_hash"],
            "policy_bundle": meta["policy_bundle"],
            "policy_digests": meta["policy_digests"],
            "policy_files": meta["policies"],
            "refdata_version": meta["refdata_version"],
            "package": meta["package"],
            "phase_locks": {
                p: {
                    "run_id": lock["run_id"],
                    "policy_digest": lock["policy_digest"],
                    "state": lock.get("state", "locked"),
                }
                for p in PHASES
                if (lock := read_json(run_root.lock_record(p)) if run_root.lock_record(p).is_file() else None)
            },
            "run_ids": info["run_ids"],
            "baseline_run_ids": info.get("baseline_run_ids", []),
            "artifacts": {p.relative_to(run_root.path).as_posix(): sha256_file(p) for p in files},
        }
        pointer = {
            "pack_id": pack.name,
            "grade": grade["outcome"],
            "run_ids": info["run_ids"],
            "parameter_hash": meta["parameter_hash"],
            "frozen": True,
        }
        discipline.set_pointer(run_root.path, "last_good", pointer)
        path = freeze_record_path(run_root, pack.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, record | {"retained": {}, "pruned": []})  # referenced before the prune runs
        pruned = discipline.prune_held(run_root, dry_run=False)
        record["retained"] = pruned["kept_runs"]
        record["pruned"] = pruned["removed_runs"]
        record["pruned_datasets"] = len(pruned["removed_datasets"])
        record["freeze_statement"] = (
            f"Segment 1B is frozen at pack {pack.name} ({grade['outcome']}): parameter_hash "
            f"{meta['parameter_hash'][:16]}…, code {meta['package']['code_digest'][:16]}…; last_good names it."
        )
        write_json(path, record)
    return record
