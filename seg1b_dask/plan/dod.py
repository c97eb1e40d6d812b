"""P1–P4, the run phases (seed plan §5–§7): each judged on its candidate run (the locked run
once locked, else the current candidate). P1 S2 reshape, P2 S4 allocation, P3 S6 geometry:
each changes only its own policy file on top of the locked phases before it (grid, S3, S8
and the gates stay the baseline's) and closes by ``lock``, which checks the DoD and
reproduces the run byte for byte first. P4: the three locked files together, B on its seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from seg1b_dask.grading import checkpoints
from seg1b_dask.grading import gates as grading
from seg1b_dask.plan.evidence import Evidence
from seg1b_dask.plan.items import (
    Item,
    code_items,
    fmt,
    lock_item,
    no_checkpoints,
    not_contradicted,
    repro_item,
    scope_item,
    scope_problems,
    versus,
)
from seg1b_dask.plan.phases import contradicts
from seg1b_dask.policies.bundle import sealed_bundle
from seg1b_dask.states.s2_tile_weights.modes import MODES as S2_MODES
from seg1b_dask.states.s4_alloc_plan.modes import MODES as S4_MODES
from seg1b_dask.states.s6_jitter.modes import MODES as S6_MODES
from seg1b_dask.states.triage import triage_hints


def p1_items(ev: Evidence, run_id: str, meta: dict[str, Any]) -> list[Item]:
    bundle = sealed_bundle(meta)
    mode = bundle.s2_tile_weights.tile_weights.mode
    folder = f"runs/{run_id}"
    items = [
        scope_item(ev, "P1", meta),
        *code_items(ev, "P1", meta),
        *not_contradicted(ev, "P1", meta),
        Item(
            "S2 runs the governed mode blend_v2 (legacy kept as a mode)",
            "pass" if S2_MODES[mode].governed else "fail",
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
        return [*items, no_checkpoints(run_id if profiles is None else pin["run_id"] if pin else run_id)]
    s2 = profiles["S2"].figures
    base = base_card["metrics"]
    items.append(
        Item(
            "concentration improves vs P0 on Gini, top1, top5, top10 (S2 mass vs the baseline scorecard)",
            "pass" if all(s2[k] < base[k] for k in grading.CONCENTRATION) else "fail",
            f"{folder}/{checkpoints.FOLDER}/checkpoints.json",
            versus(s2, base, grading.CONCENTRATION),
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
    return [*items, repro_item("P1", run_id, ev.repro(run_id)), lock_item(ev, "P1", run_id)]


def p2_items(ev: Evidence, run_id: str, meta: dict[str, Any]) -> list[Item]:
    bundle = sealed_bundle(meta)
    legacy = not S4_MODES[bundle.s4_alloc_plan.country_allocation.mode].governed
    action = (
        "set s4_alloc_plan country_allocation.mode: remass (it allocates to S2's locked mass vector)"
        if legacy
        else "retune s4_alloc_plan country_allocation: targets, max_merchant_share, min_sites_per_country"
    )
    folder = f"runs/{run_id}/{checkpoints.FOLDER}/checkpoints.json"
    items = [scope_item(ev, "P2", meta), *code_items(ev, "P2", meta), *not_contradicted(ev, "P2", meta)]
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
        return [*items, no_checkpoints(run_id if profiles is None else str(before_run))]
    new, old = profiles["S4"].figures, before["S4"].figures
    keys, coverage = grading.CONCENTRATION, "eligible_country_nonzero_share"
    improved = new["country_gini"] < old["country_gini"] and all(new[k] <= old[k] for k in keys)
    improved = improved and new[coverage] >= old[coverage]
    items.append(
        Item(
            "post-S4 concentration and coverage improve vs the pre-P2 posture (P1's run at S4)",
            "pass" if improved else "fail",
            folder,
            versus(new, old, keys) + f", coverage {fmt(new[coverage])} vs {fmt(old[coverage])}",
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
    return [*items, repro_item("P2", run_id, ev.repro(run_id)), lock_item(ev, "P2", run_id)]


def p3_items(ev: Evidence, run_id: str, meta: dict[str, Any]) -> list[Item]:
    bundle = sealed_bundle(meta)
    folder = f"runs/{run_id}"
    items = [scope_item(ev, "P3", meta), *code_items(ev, "P3", meta), *not_contradicted(ev, "P3", meta)]
    card = ev.card(run_id)
    if card is None:
        return [*items, Item("the run is scored", "fail", f"{folder}/scorecard/", action=f"seg1b score {run_id}")]
    m = card["metrics"]
    mixture = S6_MODES[bundle.s6_jitter.jitter.mode].governed
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
    return [*items, repro_item("P3", run_id, ev.repro(run_id)), lock_item(ev, "P3", run_id)]


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
    hints = triage_hints(sealed_bundle(meta))
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
        return [*items, no_checkpoints(run_id)]
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
    hints = triage_hints(bundle)
    return checkpoints.trace_runs(card, profiles, bundle.gates, "B", hints, base_card, base_profiles)


ItemsOf = Callable[[Evidence, str, dict[str, Any]], list[Item]]

RUN_PHASES: dict[str, ItemsOf] = {"P1": p1_items, "P2": p2_items, "P3": p3_items, "P4": p4_items}
