"""The remediation plan as a workflow, driven P0 → P5 on the stand-in: ``status`` after
every step, a lock refused while a DoD fails, checkpoints and ``diagnose``, a reopen
refused without evidence and accepted with it, and the freeze.

P1 here locks a deliberately weak S2 mass vector: it passes P1's DoD and grade B, and a
B+-target run of the integrated files (unsealed, so RED) then shows the contradiction that
reopens P1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from seg1b_dask.chain.runner import BUNDLES
from seg1b_dask.cli import main
from seg1b_dask.engine.execution import Execution
from seg1b_dask.errors import Seg1BError
from seg1b_dask.grading import checkpoints
from seg1b_dask.io.hashing import read_flag
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.lanes.certify import certify
from seg1b_dask.lanes.fast import fast_lane
from seg1b_dask.lanes.score import pin_baseline_run
from seg1b_dask.plan import closure
from seg1b_dask.plan import status as plan
from seg1b_dask.plan.diagnose import diagnose
from seg1b_dask.plan.phases import TITLES

pytestmark = pytest.mark.e2e


def _phase_bundles(folder: Path) -> dict[str, Path]:
    """P1 = baseline + the remediation S2 (its mass vector passes B+), P2 = + the B-level S4
    of remediation_b (its country limits pass B, not B+), P3 = + the remediation S6, P4 = +
    the B target (the plan's P4: B, with B+ as its attempt): each changes one more file."""
    shutil.copy(BUNDLES / "gates.yaml", folder / "gates.yaml")  # the plan keeps the baseline's gates
    bundles, previous = {}, BUNDLES / "baseline"
    for phase, files in {
        "P1": [],
        "P2": ["s4_alloc_plan.yaml"],
        "P3": ["s6_jitter.yaml"],
        "P4": ["s9_validation.yaml"],
    }.items():
        target = folder / phase
        shutil.copytree(previous, target)
        if phase == "P1":
            shutil.copy(BUNDLES / "remediation" / "s2_tile_weights.yaml", target / "s2_tile_weights.yaml")
        for name in files:
            shutil.copy(BUNDLES / ("remediation_b" if phase == "P2" else "remediation") / name, target / name)
        if phase == "P4":
            (target / "s9_validation.yaml").write_text("version: 1\ntarget_grade: B\n")
        bundles[phase], previous = target, target
    return bundles


def _states(root: Path) -> dict[str, str]:
    return {p.phase: p.state for p in plan.status(root, 42)}


def _items(root: Path, phase: str) -> dict[str, str]:
    found = next(p for p in plan.status(root, 42) if p.phase == phase)
    return {i.text: i.status for i in found.items}


def _status_text(root: Path) -> str:
    result = CliRunner().invoke(main, ["status", "--root", str(root)])
    assert result.exit_code == 0, result.output
    return result.output


def _refused(code: str, fn: object, *args: object) -> Seg1BError:
    with pytest.raises(Seg1BError) as err:
        fn(*args)  # type: ignore[operator]
    assert err.value.code == code, err.value
    return err.value


def test_plan_p0_to_p5(tmp_path: Path) -> None:
    root = tmp_path / "root"
    bundles = _phase_bundles(tmp_path)
    ex = Execution()

    assert _states(root) == dict.fromkeys(TITLES, "waiting") | {"P0": "open"}
    assert "→ seg1b baseline --seed 42" in _status_text(root)

    # P0: the pinned baseline, its scorecard and checkpoints.
    pin = pin_baseline_run(root, 42, ex)
    base_run = root / "runs" / pin["run_id"]
    assert _states(root)["P0"] == "done" and _states(root)["P1"] == "open"
    text = _status_text(root)
    flag = read_flag(RunRoot(root).upstream(42))
    assert f"baseline_authority/seed=42/grid=300/upstream={flag[:16]}.json  (run {pin['run_id']})" in text
    assert "next: P1: seg1b run --seed 42 --policies DIR (DIR changes s2_tile_weights only)" in text
    assert set(json.loads((base_run / "checkpoints" / "checkpoints.json").read_text())) == set(checkpoints.STAGES)

    # A lock while a DoD fails is refused: the baseline run as P1, and P2 before P1.
    err = _refused("E_DOD_FAILED", closure.lock, root, "P1", base_run, ex)
    assert "S2 runs the governed mode blend_v2" in err.message and "concentration improves" in err.message
    assert not (root / "locks" / "P1.json").exists()

    # P1: S2 changes; its checkpoints say where the rest still goes wrong.
    p1, _ = fast_lane(root, 42, bundles["P1"], None, ex)
    items = _items(root, "P1")
    assert (
        items["concentration improves vs P0 on Gini, top1, top5, top10 (S2 mass vs the baseline scorecard)"] == "pass"
    )
    assert items["two same-seed runs reproduce byte for byte"] == "not yet"
    assert _states(root)["P1"] == "ready to close"
    _refused("E_DOD_FAILED", closure.lock, root, "P2", p1.run_dir, ex)  # P2 waits for P1
    found = diagnose(root, p1.run_dir, "B")
    first = {t.gate: t.first_wrong for t in found.traces}
    assert first["country_gini"] == "S4" and first["top1_share"] == "S4"  # legacy S4 keeps 1A's counts
    assert first["nn_contraction"] == "S8" and first["merchant_countries_median"] is None
    gini = next(t for t in found.traces if t.gate == "country_gini")
    assert gini.inherited and gini.passed["S2"] and not gini.passed["S4"]
    assert gini.baseline["S8"] == pytest.approx(gini.run["S8"])  # same 1A counts as the baseline

    record = closure.lock(root, "P1", p1.run_dir, ex)
    assert record["state"] == "locked" and record["run_id"] == p1.run_id
    assert record["accepted_metrics"]["S2"]["metrics"]["country_gini"] < 0.68
    assert "P1 (S2: s2_tile_weights.yaml" in record["freeze_statement"]
    repro = json.loads((root / "reports" / f"repro-{p1.run_id}.json").read_text())
    assert repro["identical"] and len(repro["datasets"]) == len(p1.outputs)
    assert _states(root)["P1"] == "done" and _states(root)["P2"] == "open"
    _refused("E_PHASE_LOCKED", closure.lock, root, "P1", p1.run_dir, ex)

    # A run changing the locked S2 is refused.
    _refused("E_PHASE_LOCKED", fast_lane, root, 42, BUNDLES / "baseline", None, ex)  # its S2 is the legacy one

    # P2 and P3, one file each; P3 closed from the command line.
    p2, _ = fast_lane(root, 42, bundles["P2"], None, ex)
    items = _items(root, "P2")
    assert items["post-S4 concentration and coverage improve vs the pre-P2 posture (P1's run at S4)"] == "pass"
    assert items["no reconcentration breach by integerization (every B gate passing at S2 passes at S4)"] == "pass"
    closure.lock(root, "P2", p2.run_dir, ex)
    p3, _ = fast_lane(root, 42, bundles["P3"], None, ex)
    assert _items(root, "P3")["no stripe or corridor collapse on the top-volume countries (sentinel clear)"] == "pass"
    result = CliRunner().invoke(main, ["lock", "P3", p3.run_id, "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"P3 locked at run {p3.run_id}: s6_jitter digest ")
    # P3's locked run already holds the three locked files: P4 judges it until a newer candidate.
    assert [_states(root)[p] for p in ("P1", "P2", "P3", "P4")] == ["done", "done", "done", "done"]
    assert next(p for p in plan.status(root) if p.phase == "P4").subject == p3.run_id

    # P4: the integrated candidate passes B, its target (sealed); its B+ attempt does not, and
    # does not hold P4.
    p4, scored = fast_lane(root, 42, bundles["P4"], None, ex)
    assert scored.grade.outcome == "GREEN_B" and scored.card["sealed"]
    items = _items(root, "P4")
    assert items["every B hard gate passes on the candidate's seed"] == "pass"
    assert items["every B+ (attempt) gate passes on the candidate's seed"] == "not yet"
    assert _states(root)["P4"] == "done" and _states(root)["P5"] == "open"
    shown = CliRunner().invoke(main, ["diagnose", p4.run_id, "--root", str(root), "--grade", "B+"]).output
    assert "first wrong at S4: country_gini, top10_share, top5_share, top1_share" in shown  # S4's B-level limits

    # P5: certify the required seeds, freeze, and status says the plan is complete.
    pack = certify(root, None, bundles["P4"], workers=2)
    assert pack.report.outcome == "GREEN_B" and sorted(pack.results) == [7, 42, 101, 202]
    assert _states(root)["P5"] == "ready to close"
    result = CliRunner().invoke(main, ["freeze", pack.folder.name, "--root", str(root)])
    assert result.exit_code == 0, result.output
    frozen = json.loads((root / "reports" / f"freeze-{pack.folder.name}.json").read_text())
    assert frozen["grade"] == "GREEN_B" and set(frozen["phase_locks"]) == {"P1", "P2", "P3"}
    assert set(frozen["run_ids"]) <= set(frozen["retained"]) and p1.run_id in frozen["retained"]
    assert sorted(p.name for p in (root / "runs").iterdir()) == sorted(frozen["retained"])
    assert f"certification/{pack.folder.name}/grade.json" in frozen["artifacts"]
    last_good = json.loads((root / "last_good" / "pointer.json").read_text())
    assert last_good["pack_id"] == pack.folder.name and last_good["frozen"]
    assert set(_states(root).values()) == {"done"}
    assert "next: none: the plan is complete (P5 frozen)" in _status_text(root)

    # The same files targeting B+: S9 refuses to seal, so the run grades RED; its diagnosis
    # still shows where B+ first goes wrong.
    attempt_bundle = tmp_path / "P4-bplus"
    shutil.copytree(bundles["P4"], attempt_bundle)
    shutil.copy(BUNDLES / "remediation" / "s9_validation.yaml", attempt_bundle)
    attempt, scored = fast_lane(root, 42, attempt_bundle, None, ex)
    assert scored.grade.outcome == "RED" and not scored.card["sealed"]
    assert [f.gate for f in scored.grade.failures["B"]] == ["unsealed"]  # its figures pass B: only the seal fails
    assert {"country_gini", "top1_share"} <= {f.gate for f in scored.grade.failures["B_PLUS"]}

    # Reopening P2: a reason and a contradicting run made under the lock are both needed.
    _refused("E_REOPEN_REFUSED", closure.reopen, root, "P2", "  ", attempt.run_dir)
    err = _refused("E_REOPEN_REFUSED", closure.reopen, root, "P2", "B+ needs tighter country limits", p4.run_dir)
    assert "(no gate fails)" in err.message  # at its target, B, the integrated candidate contradicts nothing
    lock, cascaded = closure.reopen(root, "P2", "B+ needs tighter country limits", attempt.run_dir)
    entry = lock["reopened"][-1]
    assert entry["evidence_run"] == attempt.run_id and entry["reason"] == "B+ needs tighter country limits"
    assert any(c.startswith("top1_share first wrong at S4") for c in entry["contradiction"])
    assert cascaded == ["P3"]  # built on P2: reopened with it
    assert _states(root)["P1"] == "done" and _states(root)["P2"] == "open" and _states(root)["P3"] == "waiting"
    assert _items(root, "P2")["not the s4_alloc_plan a reopen contradicted"] == "fail"  # the candidate's S4
    p1_digest = json.loads((root / "locks" / "P1.json").read_text())["policy_digest"]
    in_force = closure.check_locks(root, {"s2_tile_weights": p1_digest, "s4_alloc_plan": "b", "s6_jitter": "c"})
    assert [lock["run_id"] for lock in in_force] == [p1.run_id]  # only P1 still binds

    # P2 closes again on the remediation's S4 (the later phases' files may stay as they were locked).
    again_bundle = tmp_path / "P2-again"
    shutil.copytree(bundles["P4"], again_bundle)
    shutil.copy(BUNDLES / "remediation" / "s4_alloc_plan.yaml", again_bundle)
    again, scored = fast_lane(root, 42, again_bundle, None, ex)
    assert scored.grade.outcome == "GREEN_BPLUS"
    relocked = closure.lock(root, "P2", again.run_dir, ex)
    assert relocked["previous"][0]["run_id"] == p2.run_id and relocked["reopened"] == []
    assert relocked["previous"][0]["reopened"][-1]["evidence_run"] == attempt.run_id
    assert _states(root)["P2"] == "done" and _states(root)["P3"] == "open"


def test_checkpoints_are_the_runs_own_figures_and_rebuild_identically(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result, scored = fast_lane(root, 42, BUNDLES / "remediation", None, Execution())
    folder = result.run_dir / "checkpoints"
    profiles = checkpoints.read(result.run_dir)
    assert profiles is not None
    s2_stats = next(r.stats for r in result.states if r.id == "S2")
    assert profiles["S2"].figures["country_gini"] == pytest.approx(s2_stats["country_gini"], abs=5e-4)
    assert profiles["S2"].figures["southern_hemisphere_share"] == pytest.approx(s2_stats["southern_share"], abs=5e-5)
    m = scored.card["metrics"]
    for key in ("country_gini", "top1_share", "eligible_country_nonzero_share"):  # S4's counts are S8's
        assert profiles["S4"].figures[key] == pytest.approx(m[key], abs=1e-12)
    # Tiles never straddle the equator and jitter stays in the tile: S4's south is S8's.
    assert profiles["S4"].figures["southern_hemisphere_share"] == pytest.approx(m["southern_hemisphere_share"])
    assert profiles["1A"].figures["merchant_countries_median"] == 1.0
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    shutil.rmtree(folder)  # a run made before checkpoints existed: rebuilt from its datasets
    checkpoints.ensure(root, result.run_dir)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # A damaged checkpoint: status shows the phase failing on it, naming the file.
    (folder / "country_profile.csv").write_text("legal_country_iso,region\nDE,Europe\n")
    p1 = next(p for p in plan.status(root, 42) if p.phase == "P1")
    assert [(i.status, i.evidence) for i in p1.items] == [
        ("fail", f"runs/{result.run_id}/checkpoints/country_profile.csv")
    ]
    assert p1.items[0].detail.startswith("a damaged checkpoint (KeyError")
