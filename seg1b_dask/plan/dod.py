"""The remediation plan as a workflow (seed plan §5–§7): every phase's Definition of Done
evaluated from the evidence under the run root, closure records, reopening, freezing.

- P0 baseline authority: the seed's pinned baseline (on the shipped grid, over the seed's
  stand-in), its scorecard, its checkpoints. Later phases compare with their run's own pin.
- P1 S2 reshape, P2 S4 allocation, P3 S6 geometry: each judged on its candidate run (the
  locked run once locked, else the current candidate), each changing only its own policy
  file on top of the locked phases before it (grid, S3, S8 and the gates stay the
  baseline's), closed by ``lock``, which checks the DoD and reproduces the run byte for
  byte first.
- P4 the integrated candidate: the three locked files together, B on its seed.
- P5 a certification pack: GREEN on every required seed, closed by ``freeze``.

Phases run in order (§7): a phase is judged only once every phase before it is done.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.grading import checkpoints
from seg1b_dask.grading import gates as grading
from seg1b_dask.io import discipline, packs
from seg1b_dask.io.discipline import PHASES, read_json, read_optional
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.plan.evidence import Evidence, is_locked
from seg1b_dask.policies.models import load_bundle, sealed_bundle

Status = Literal["pass", "fail", "not yet"]
TITLES = {
    "P0": "baseline authority and checkpoints",
    "P1": "S2 macro-mass reshape",
    "P2": "S4 integer allocation",
    "P3": "S6 geometry",
    "P4": "integrated candidate",
    "P5": "certification and freeze",
}
TUNES = {"P1": "S2", "P2": "S4", "P3": "S6"}  # the state whose policy each locked phase fixes
CHECKPOINT_OF = {"P1": "S2", "P2": "S4", "P3": "S8"}  # the checkpoint where that state's shape is measured
PHASE_OF = {policy: phase for phase, policy in PHASES.items()}
TARGET_POLICY = "s9_validation"  # the target grade: P4 raises it; every other file is someone's


# Gates measured on the sites only show at S8 whatever caused them; the phases whose files
# the triage map names for their family can be contradicted by them.
SITE_GATE_OWNERS = {
    "nn": ("P3",),  # S6's spreads
    "collapse": ("P2", "P3"),  # S4's tile allocation lays stripes, S6's spread hides or shows them
    "urban": ("P1", "P3"),  # S2's population basis, S6's spreads
    "bootstrap": ("P1", "P2"),  # concentration under resampling: S2's mass, S4's counts
}


def contradicts(trace: checkpoints.GateTrace) -> tuple[str, ...]:
    """The locked phases a failing gate contradicts: the state where it first goes wrong
    (S2 → P1, S4 → P2); on the sites only, the owners of its family."""
    if trace.first_wrong == "S8":
        return SITE_GATE_OWNERS.get(trace.family, ())
    return tuple(p for p, stage in CHECKPOINT_OF.items() if stage == trace.first_wrong)


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


# -- DoD items ----------------------------------------------------------------------


def fmt(value: float) -> str:
    return f"{value:.4f}"


def p0_items(ev: Evidence) -> tuple[str | None, list[Item]]:
    seed = ev.seed
    pin, key = ev.pin(seed), ev.pin_key(seed)
    pin_file = ev.rel(key.path(ev.root)) if key else f"{ev.rel(ev.rr.pins)}/seed={seed}/"
    text = f"baseline of seed {seed} pinned, its lineage tokens equal its run's"
    if pin is None:
        return None, [Item(text, "not yet", pin_file, action=f"seg1b baseline --seed {seed}")]
    run_id = pin["run_id"]
    meta = ev.meta(run_id)
    folder = f"runs/{run_id}"
    bad = [k for k in ("run_id", "seed", "parameter_hash", "manifest_fingerprint") if meta is None or meta[k] != pin[k]]
    items = [
        Item(
            text,
            "fail" if bad else "pass",
            pin_file,
            f"run.json missing or differing in {', '.join(bad)}" if bad else f"run {run_id}",
            "the pinned run is damaged: restore it from a backup of the run root",
        )
    ]
    card = ev.card(run_id)
    tables = (packs.SCORECARD_JSON, packs.COUNTRY_SHARES_CSV, packs.REGION_SHARES_CSV, packs.NN_QUANTILES_CSV)
    missing = [t for t in tables if not (packs.scorecard_dir(ev.rr.run(run_id)) / t).is_file()]
    stored = card is not None and not missing and (card.get("baseline") or {}).get("run_id") == run_id
    items.append(
        Item(
            "baseline scorecard and companion tables stored (country, region, NN quantiles)",
            "pass" if stored else "fail",
            f"{folder}/scorecard/",
            (
                f"Gini {fmt(card['metrics']['country_gini'])}, top1 {fmt(card['metrics']['top1_share'])}, "
                f"nn_ratio {card['metrics']['nn_ratio']:.3f}; its grade {card['grade_single_seed']['outcome']}"
            )
            if stored and card
            else f"missing: {', '.join(missing) or 'the pin in scorecard.json'}",
            f"seg1b score {run_id}",
        )
    )
    items.append(
        Item(
            "S2 / S4 / S8 checkpoints of the baseline captured",
            "pass" if ev.profiles(run_id) else "fail",
            f"{folder}/{checkpoints.FOLDER}/",
            "country mass, post-integerization and site profiles, NN tail, sentinel",
            f"seg1b diagnose {run_id} (writes the checkpoints of a run made before they existed)",
        )
    )
    shipped = load_bundle(_baseline_policies(), refdata_version()).digests
    differ = sorted(k for k, v in shipped.items() if k != "gates" and meta and meta["policy_digests"][k] != v)
    items.append(
        Item(
            "the authority is the legacy posture (the shipped baseline bundle's policy files)",
            "fail" if differ or meta is None else "pass",
            f"{folder}/run.json",
            f"differs in {', '.join(differ)}" if differ else (f"bundle {meta['policy_bundle']}" if meta else ""),
            "a seed's pin is permanent: start a new run root and pin policies/baseline",
        )
    )
    return run_id, items


def _baseline_policies() -> Path:
    from seg1b_dask.chain.runner import BASELINE_POLICIES

    return BASELINE_POLICIES


def _subject(ev: Evidence, phase: str) -> str | None:
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


def _scope(ev: Evidence, phase: str, meta: dict[str, Any]) -> Item:
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


def _code(ev: Evidence, phase: str, meta: dict[str, Any]) -> list[Item]:
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


def _not_contradicted(ev: Evidence, phase: str, meta: dict[str, Any]) -> list[Item]:
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


def _lock_item(ev: Evidence, phase: str, run_id: str) -> Item:
    lock = ev.locks.get(phase)
    text = f"{phase} closure record written (policy, tokens, evidence, metric snapshot)"
    evidence = f"locks/{phase}.json"
    if is_locked(lock) and lock["run_id"] == run_id:
        return Item(text, "pass", evidence, f"locked {lock.get('locked_at', '')}", settled_on_close=True)
    detail = f"reopened: {lock['reopened'][-1]['reason']}" if lock and lock.get("reopened") else ""
    return Item(text, "not yet", evidence, detail, f"seg1b lock {phase} {run_id}", settled_on_close=True)


def _versus(new: dict[str, float], old: dict[str, float], keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k.replace('_share', '')} {fmt(new[k])} vs {fmt(old[k])}" for k in keys)


def _no_checkpoints(run_id: str) -> Item:
    return Item(
        f"checkpoints of run {run_id} present",
        "fail",
        f"runs/{run_id}/{checkpoints.FOLDER}/checkpoints.json",
        action=f"seg1b diagnose {run_id} (writes them)",
    )


def p1_items(ev: Evidence, run_id: str, meta: dict[str, Any]) -> list[Item]:
    bundle = sealed_bundle(meta)
    mode = bundle.s2_tile_weights.tile_weights.mode
    folder = f"runs/{run_id}"
    items = [
        _scope(ev, "P1", meta),
        *_code(ev, "P1", meta),
        *_not_contradicted(ev, "P1", meta),
        Item(
            "S2 runs the governed mode blend_v2 (legacy kept as a mode)",
            "pass" if mode == "blend_v2" else "fail",
            f"{folder}/run.json",
            f"s2_tile_weights tile_weights.mode {mode}",
            "set s2_tile_weights.yaml tile_weights.mode: blend_v2 (policies/remediation has one)",
        ),
    ]
    pin = ev.run_pin(meta)
    profiles = ev.profiles(run_id)
    base_profiles = ev.profiles(pin["run_id"]) if pin else None
    base_card = ev.card(pin["run_id"]) if pin else None
    if profiles is None or base_profiles is None or base_card is None:
        return [*items, _no_checkpoints(run_id if profiles is None else pin["run_id"] if pin else run_id)]
    s2 = profiles["S2"].figures
    base = base_card["metrics"]
    items.append(
        Item(
            "concentration improves vs P0 on Gini, top1, top5, top10 (S2 mass vs the baseline scorecard)",
            "pass" if all(s2[k] < base[k] for k in grading.CONCENTRATION) else "fail",
            f"{folder}/{checkpoints.FOLDER}/checkpoints.json",
            _versus(s2, base, grading.CONCENTRATION),
            "retune s2_tile_weights country_mass: population_exponent, country_cap_share_hard, topk_cap_share, "
            "concentration_penalty",
        )
    )
    floors = bundle.gates.region_floor_share
    breached = {r for r, floor in floors.items() if profiles["S2"].region_share.get(r, 0.0) < floor}
    before = {r for r, floor in floors.items() if base_profiles["S2"].region_share.get(r, 0.0) < floor}
    items.append(
        Item(
            "no new region-floor breach in S2's diagnostics (vs the baseline's S2)",
            "fail" if breached - before else "pass",
            f"{folder}/{checkpoints.FOLDER}/checkpoints.json",
            "new: " + ", ".join(sorted(breached - before)) if breached - before else "",
            "retune s2_tile_weights country_mass.region_floor_share",
        )
    )
    return [*items, repro_item("P1", run_id, ev.repro(run_id)), _lock_item(ev, "P1", run_id)]


def p2_items(ev: Evidence, run_id: str, meta: dict[str, Any]) -> list[Item]:
    bundle = sealed_bundle(meta)
    legacy = bundle.s4_alloc_plan.country_allocation.mode == "legacy"
    action = (
        "set s4_alloc_plan country_allocation.mode: remass (it allocates to S2's locked mass vector)"
        if legacy
        else "retune s4_alloc_plan country_allocation: targets, max_merchant_share, min_sites_per_country"
    )
    folder = f"runs/{run_id}/{checkpoints.FOLDER}/checkpoints.json"
    items = [_scope(ev, "P2", meta), *_code(ev, "P2", meta), *_not_contradicted(ev, "P2", meta)]
    # The pre-P2 posture: P1's run at S4, unless P1 ran with an S4 other than the baseline's.
    p1 = ev.locked("P1")
    pin = ev.run_pin(meta)
    base = ev.meta(pin["run_id"]) if pin else None
    before_run = p1["run_id"] if p1 else None
    p1_meta = ev.meta(before_run) if before_run else None
    if base and p1_meta and p1_meta["policy_digests"]["s4_alloc_plan"] != base["policy_digests"]["s4_alloc_plan"]:
        before_run = base["run_id"]
    profiles = ev.profiles(run_id)
    before = ev.profiles(before_run) if before_run else None
    if profiles is None or before is None:
        return [*items, _no_checkpoints(run_id if profiles is None else str(before_run))]
    new, old = profiles["S4"].figures, before["S4"].figures
    keys, coverage = grading.CONCENTRATION, "eligible_country_nonzero_share"
    improved = new["country_gini"] < old["country_gini"] and all(new[k] <= old[k] for k in keys)
    improved = improved and new[coverage] >= old[coverage]
    items.append(
        Item(
            "post-S4 concentration and coverage improve vs the pre-P2 posture (P1's run at S4)",
            "pass" if improved else "fail",
            folder,
            _versus(new, old, keys) + f", coverage {fmt(new[coverage])} vs {fmt(old[coverage])}",
            action,
        )
    )
    s2_rows = checkpoints.stage_gates(profiles["S2"], bundle.gates, "B")
    s4_rows = checkpoints.stage_gates(profiles["S4"], bundle.gates, "B")
    breaches = [
        f"{gate} {fmt(s2_rows[gate]['observed'])} at S2, {fmt(row['observed'])} at S4"
        for gate, row in s4_rows.items()
        if checkpoints.measured(gate, "S2") and s2_rows[gate]["passed"] and not row["passed"]
    ]
    items.append(
        Item(
            "no reconcentration breach by integerization (every B gate passing at S2 passes at S4)",
            "fail" if breaches else "pass",
            folder,
            "; ".join(breaches),
            action,
        )
    )
    return [*items, repro_item("P2", run_id, ev.repro(run_id)), _lock_item(ev, "P2", run_id)]


def p3_items(ev: Evidence, run_id: str, meta: dict[str, Any]) -> list[Item]:
    bundle = sealed_bundle(meta)
    folder = f"runs/{run_id}"
    items = [_scope(ev, "P3", meta), *_code(ev, "P3", meta), *_not_contradicted(ev, "P3", meta)]
    card = ev.card(run_id)
    if card is None:
        return [*items, Item("the run is scored", "fail", f"{folder}/scorecard/", action=f"seg1b score {run_id}")]
    m = card["metrics"]
    mixture = bundle.s6_jitter.jitter.mode == "mixture_v3"
    spread = "retune s6_jitter jitter: core_density_per_km2_per_million, secondary_reach, tail_reach"
    floor = bundle.gates.nn_contraction_min.B
    contraction = m["nn_contraction"]
    items.append(
        Item(
            f"nearest-neighbour tail contracts by at least {floor:.0%} vs the baseline (B floor)",
            "pass" if contraction >= floor else "fail",  # NaN (no baseline) fails
            f"{folder}/scorecard/nn_quantiles.csv",
            f"nn_contraction {fmt(contraction)}: p99/p50 {m['nn_ratio']:.3f} vs {m['baseline_nn_ratio']:.3f}",
            spread if mixture else "set s6_jitter jitter.mode: mixture_v3 (uniform_v1 has no tail control)",
        )
    )
    flagged = [c for c, s in card.get("sentinel", {}).items() if s["flagged"]]
    items.append(
        Item(
            "no stripe or corridor collapse on the top-volume countries (sentinel clear)",
            "pass" if m["sentinel_flagged"] <= bundle.gates.sentinel_flagged_max.B else "fail",
            f"{folder}/scorecard/sentinel.csv",
            f"flagged: {', '.join(flagged)}" if flagged else f"0 of {len(card.get('sentinel', {}))} flagged",
            f"{spread}; a stripe laid by S4's tiles needs P2 reopened",
        )
    )
    stats = {s["id"]: s["stats"] for s in meta["states"]}
    s7, s9 = stats["S7"], stats["S9"]
    valid = s7["inside_tile"] == 1.0 and s7["inside_country"] == 1.0 and not s9["failed_checks"]
    items.append(
        Item(
            "coordinates 100 % valid, every site inside its tile and country",
            "pass" if valid else "fail",
            f"{folder}/run.json",
            f"inside tile {s7['inside_tile']}, inside country {s7['inside_country']}, "
            f"S9 failed checks: {', '.join(s9['failed_checks']) or 'none'}",
            "structural contract: fix the implementation bug before further realism tuning",
        )
    )
    return [*items, repro_item("P3", run_id, ev.repro(run_id)), _lock_item(ev, "P3", run_id)]


def p4_items(ev: Evidence, run_id: str, meta: dict[str, Any]) -> list[Item]:
    folder = f"runs/{run_id}"
    wrong = scope_problems(ev, "P4", meta["policy_digests"], meta["seed"])
    items = [
        Item(
            "the integrated candidate runs the locked P1 + P2 + P3 files (the rest the baseline's)",
            "fail" if wrong else "pass",
            f"{folder}/run.json",
            "; ".join(wrong),
            "run the bundle holding the three locked files (seg1b run --policies DIR)",
        )
    ]
    card = ev.card(run_id)
    if card is None:
        return [*items, Item("the candidate is scored", "fail", f"{folder}/scorecard/", action=f"seg1b score {run_id}")]
    grade = card["grade_single_seed"]
    hints = grading.triage_hints(sealed_bundle(meta))
    for level, blocking in (("B", True), ("B_PLUS", False)):
        failing = sorted({f["gate"] for f in grade["failures"][level]})
        action = grading.triage([grading.Failure(**f) for f in grade["failures"][level]], hints)
        items.append(
            Item(
                f"every {'B hard' if level == 'B' else 'B+ (attempt)'} gate passes on the candidate's seed",
                "pass" if not failing else ("fail" if blocking else "not yet"),
                f"{folder}/scorecard/scorecard.json",
                (f"failing: {', '.join(failing)}" if failing else f"single-seed grade {grade['outcome']}")
                + f"; relocated_share {fmt(card['fidelity']['relocated_share'])}",
                action if failing else "",
                blocking,
            )
        )
    traces = b_traces(ev, run_id, meta)
    if traces is None:
        return [*items, _no_checkpoints(run_id)]
    against = [(t, owners) for t in traces if t.first_wrong and (owners := contradicts(t))]
    items.append(
        Item(
            "no locked phase contradicted (no B gate first wrong at S2, at S4, or on the sites in a family they own)",
            "fail" if against else "pass",
            f"{folder}/{checkpoints.FOLDER}/checkpoints.json",
            "; ".join(f"{t.gate} first wrong at {t.first_wrong} ({'/'.join(o)})" for t, o in against),
            f"seg1b reopen {against[0][1][0]} --reason '…' --evidence {run_id}" if against else "",
        )
    )
    return items


def b_traces(ev: Evidence, run_id: str, meta: dict[str, Any]) -> list[checkpoints.GateTrace] | None:
    """The run's B gates traced through its checkpoints (``seg1b diagnose`` at B), from the
    evidence already read; None without checkpoints."""
    card, profiles, bundle = ev.card(run_id), ev.profiles(run_id), sealed_bundle(meta)
    if card is None or profiles is None:
        return None
    pin = ev.run_pin(meta)
    base_card = ev.card(pin["run_id"]) if pin else None
    base_profiles = ev.profiles(pin["run_id"]) if pin else None
    hints = grading.triage_hints(bundle)
    return checkpoints.trace_runs(card, profiles, bundle.gates, "B", hints, base_card, base_profiles)


def _relocated(pack: Path) -> str:
    """The price every grade is reported beside: the pack's range of ``relocated_share``."""
    shares = sorted(read_json(card)["fidelity"]["relocated_share"] for card in pack.glob("seeds/seed=*/scorecard.json"))
    return f"{fmt(shares[0])}–{fmt(shares[-1])}" if shares else "–"


def freeze_record_path(rr: RunRoot, pack_id: str) -> Path:
    return rr.path / "reports" / f"freeze-{pack_id}.json"


def p5_items(ev: Evidence, pack: Path) -> list[Item]:
    from seg1b_dask.io.packs import pack_content_sha256

    grade = read_json(packs.grade_json(pack))
    info = read_json(packs.pack_json(pack))
    folder = ev.rel(pack)
    intact = info.get("content_sha256") == pack_content_sha256(pack)
    items = [
        Item(
            "the pack is intact (its content digest matches its files)",
            "pass" if intact else "fail",
            f"{folder}/pack.json",
            f"content sha256 {str(info.get('content_sha256'))[:16]}…",
            "certify again: a file of this pack changed after it was written",
        )
    ]
    base = ev.baseline_meta(ev.seed)
    required = sealed_bundle(base).gates.required_seeds if base else ()
    missing = sorted((set(required) - set(grade["seeds"])) | set(grade["missing_seeds"]))
    outcome = grade["outcome"]
    items.append(
        Item(
            "hard gates pass on every required seed (B, or B+ when claimed)",
            "pass" if outcome != "RED" and not missing else "fail",
            f"{folder}/grade.json",
            f"{outcome} on seeds {', '.join(map(str, grade['seeds']))}"
            + (f"; required seeds missing: {', '.join(map(str, missing))}" if missing else "")
            + f"; relocated_share {_relocated(pack)}",
            grade.get("next_action", "") or f"seg1b certify --seeds {','.join(map(str, required))} --policies DIR",
        )
    )
    claimed: grading.Level = "B_PLUS" if outcome == "GREEN_BPLUS" else "B"
    cv_fail = [f["gate"] for f in grade["failures"][claimed] if grading.family_of(f["gate"]) == "cv"]
    worst = max(grade["cv"].items(), key=lambda kv: kv[1], default=("–", 0.0))
    items.append(
        Item(
            f"stability: every core-metric CV within the claimed grade ({claimed.replace('_PLUS', '+')})",
            "fail" if cv_fail else "pass",
            f"{folder}/cv.csv",
            f"largest CV {worst[0]} {fmt(worst[1])}" + (f"; failing {', '.join(cv_fail)}" if cv_fail else ""),
            grading.triage_hints()["cv"],
        )
    )
    wrong = scope_problems(ev, "P4", info.get("policy_digests", {}), ev.seed)
    items.append(
        Item(
            "the certified bundle holds the locked P1 + P2 + P3 files (the rest the baseline's)",
            "fail" if wrong or "policy_digests" not in info else "pass",
            f"{folder}/pack.json",
            "; ".join(wrong) or ("" if "policy_digests" in info else "the pack records no policy digests"),
            "certify the integrated candidate's bundle (seg1b certify --policies DIR)",
        )
    )
    record_path = freeze_record_path(ev.rr, pack.name)
    record = read_optional(record_path)
    evidence = f"reports/{record_path.name}"
    items.append(
        Item(
            "final lock set recorded (policy files, code digest, scorecards, reports)",
            "pass" if record else "not yet",
            evidence,
            f"frozen {record['frozen_at']}" if record else "",
            f"seg1b freeze {pack.name}",
            settled_on_close=True,
        )
    )
    superseded = sorted({p.name for p in ev.rr.run_folders()} - set(discipline.referenced_runs(ev.root)))
    others = sorted(p.name for p in ev.rr.packs() if p.name != pack.name)
    left = superseded + [f"pack {p}" for p in others]
    items.append(
        Item(
            "superseded runs and packs pruned, the retained runs listed",
            "pass" if record and not left else ("fail" if record else "not yet"),
            evidence,
            (f"{len(record['retained'])} runs retained" + (f"; superseded since: {', '.join(left)}" if left else ""))
            if record
            else "",
            f"seg1b freeze {pack.name} again (prunes)" if record else f"seg1b freeze {pack.name} (prunes)",
            settled_on_close=True,
        )
    )
    return items


# -- status -------------------------------------------------------------------------

ItemsOf = Callable[[Evidence, str, dict[str, Any]], list[Item]]
RUN_PHASES: dict[str, ItemsOf] = {"P1": p1_items, "P2": p2_items, "P3": p3_items, "P4": p4_items}
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
        return PhaseStatus("P5", pack.name, p5_items(ev, pack), closed=freeze_record_path(ev.rr, pack.name).is_file())
    run_id = _subject(ev, phase)
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
