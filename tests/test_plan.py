"""The remediation plan as a workflow, driven P0 → P5 on the stand-in: ``status`` after
every step, a lock refused while a DoD fails, checkpoints and ``diagnose``, a reopen
refused without evidence and accepted with it, and the freeze.

P1 here locks a deliberately weak S2 mass vector: it passes P1's DoD and grade B, and a
B+-target run of the integrated files (unsealed, so RED) then shows the contradiction that
reopens P1.

Each step of the plan is a module fixture: it advances a copy of the run root the step
before left, and leaves its own read-only; what was only visible on the way (a DoD before
its lock, a command's output) it keeps in ``seen``. Each test checks one step, on that root
or, where the check itself writes (the commands and the lanes take the root's lock), on
its own copy."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import SharedRun, bundle_maker, copy_root, make_read_only

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

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
EX = Execution()
REASON = "B+ needs tighter country limits"


def _phase_bundles(folder: Path) -> dict[str, Path]:
    """P1 = baseline + the remediation S2 (its mass vector passes B+), P2 = + the B-level S4
    of remediation_b (its country limits pass B, not B+), P3 = + the remediation S6, P4 = +
    the B target (the plan's P4: B, with B+ as its attempt): each changes one more file. All
    keep the baseline's gates: the plan's."""
    make = bundle_maker(folder)
    p1 = make("baseline", name="P1", s2_tile_weights=BUNDLES / "remediation" / "s2_tile_weights.yaml")
    p2 = make(p1, name="P2", s4_alloc_plan=BUNDLES / "remediation_b" / "s4_alloc_plan.yaml")
    p3 = make(p2, name="P3", s6_jitter=BUNDLES / "remediation" / "s6_jitter.yaml")
    p4 = make(p3, name="P4", s9_validation={"target_grade": "B"})
    return {"P1": p1, "P2": p2, "P3": p3, "P4": p4}


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


@dataclass(frozen=True)
class Step:
    """The run root as a step of the plan left it (read-only), the run it made (if any), and
    what was seen on the way."""

    root: Path
    run_id: str | None = None
    seen: dict[str, Any] = field(default_factory=dict)

    def run(self, run_id: str | None = None) -> Path:
        return self.root / "runs" / str(run_id or self.run_id)

    def copy(self, target: Path) -> Path:
        return copy_root(self.root, target)


def _advance(step: Step, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A writable copy of ``step``'s root for the next step to advance."""
    return step.copy(tmp_path_factory.mktemp(name) / "root")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _phase_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="module")
def p0(request: pytest.FixtureRequest, seed42_pinned: SharedRun, tmp_path_factory: pytest.TempPathFactory) -> Step:
    """P0: seed 42's baseline pinned, with its scorecard and checkpoints (the session's pinned
    root; ``pin_baseline_run`` returns the pin in place)."""
    root = copy_root(seed42_pinned.root, tmp_path_factory.mktemp("p0") / "root")
    pin = pin_baseline_run(root, 42, EX)
    return Step(make_read_only(request, root), pin["run_id"], {"pin": pin})


@pytest.fixture(scope="module")
def p1_candidate(
    request: pytest.FixtureRequest, p0: Step, bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Step:
    """P1's candidate: S2 changes; not locked yet."""
    root = _advance(p0, tmp_path_factory, "p1-candidate")
    p1, _ = fast_lane(root, 42, bundles["P1"], None, EX)
    return Step(make_read_only(request, root), p1.run_id, {"outputs": len(p1.outputs)})


@pytest.fixture(scope="module")
def p1_locked(request: pytest.FixtureRequest, p1_candidate: Step, tmp_path_factory: pytest.TempPathFactory) -> Step:
    """P1 locked at its candidate (the lock reproduces the run from scratch first)."""
    root = _advance(p1_candidate, tmp_path_factory, "p1-locked")
    record = closure.lock(root, "P1", root / "runs" / str(p1_candidate.run_id), EX)
    return Step(make_read_only(request, root), p1_candidate.run_id, {**p1_candidate.seen, "record": record})


@pytest.fixture(scope="module")
def p2_locked(
    request: pytest.FixtureRequest, p1_locked: Step, bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Step:
    """P2: one file more (the B-level S4); its DoD as seen before the lock; locked."""
    root = _advance(p1_locked, tmp_path_factory, "p2-locked")
    p2, _ = fast_lane(root, 42, bundles["P2"], None, EX)
    items = _items(root, "P2")
    closure.lock(root, "P2", p2.run_dir, EX)
    return Step(make_read_only(request, root), p2.run_id, {"items": items})


@pytest.fixture(scope="module")
def p3_locked(
    request: pytest.FixtureRequest, p2_locked: Step, bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Step:
    """P3: one file more (the remediation's S6); its DoD before the lock; locked from the command line."""
    root = _advance(p2_locked, tmp_path_factory, "p3-locked")
    p3, _ = fast_lane(root, 42, bundles["P3"], None, EX)
    items = _items(root, "P3")
    locked = CliRunner().invoke(main, ["lock", "P3", p3.run_id, "--root", str(root)])
    seen = {"items": items, "exit_code": locked.exit_code, "output": locked.output}
    return Step(make_read_only(request, root), p3.run_id, seen)


@pytest.fixture(scope="module")
def p4(
    request: pytest.FixtureRequest, p3_locked: Step, bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Step:
    """P4: the integrated candidate, targeting B."""
    root = _advance(p3_locked, tmp_path_factory, "p4")
    p4, scored = fast_lane(root, 42, bundles["P4"], None, EX)
    return Step(make_read_only(request, root), p4.run_id, {"scored": scored})


@pytest.fixture(scope="module")
def p5(
    request: pytest.FixtureRequest, p4: Step, bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Step:
    """P5: the required seeds certified with P4's files; the states before the freeze; the pack
    frozen from the command line."""
    root = _advance(p4, tmp_path_factory, "p5")
    pack = certify(root, None, bundles["P4"], workers=2)
    states = _states(root)
    frozen = CliRunner().invoke(main, ["freeze", pack.folder.name, "--root", str(root)])
    seen = {"pack": pack, "states": states, "exit_code": frozen.exit_code, "output": frozen.output}
    return Step(make_read_only(request, root), None, seen)


@pytest.fixture(scope="module")
def attempt(
    request: pytest.FixtureRequest, p5: Step, bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Step:
    """The same files as P4 targeting B+ (the remediation's S9), run after the freeze."""
    bundle = bundle_maker(tmp_path_factory.mktemp("attempt-bundle"))(
        bundles["P4"], name="P4-bplus", s9_validation=BUNDLES / "remediation" / "s9_validation.yaml"
    )
    root = _advance(p5, tmp_path_factory, "attempt")
    run, scored = fast_lane(root, 42, bundle, None, EX)
    return Step(make_read_only(request, root), run.run_id, {"scored": scored})


@pytest.fixture(scope="module")
def reopened(request: pytest.FixtureRequest, attempt: Step, tmp_path_factory: pytest.TempPathFactory) -> Step:
    """P2 reopened with a reason and the attempt as its contradicting run."""
    root = _advance(attempt, tmp_path_factory, "reopened")
    lock, cascaded = closure.reopen(root, "P2", REASON, root / "runs" / str(attempt.run_id))
    return Step(make_read_only(request, root), attempt.run_id, {"lock": lock, "cascaded": cascaded})


@pytest.fixture(scope="module")
def p2_again(
    request: pytest.FixtureRequest,
    reopened: Step,
    bundles: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Step:
    """P2 closed again on the remediation's S4 (the later phases' files may stay as they were locked)."""
    bundle = bundle_maker(tmp_path_factory.mktemp("again-bundle"))(
        bundles["P4"], name="P2-again", s4_alloc_plan=BUNDLES / "remediation" / "s4_alloc_plan.yaml"
    )
    root = _advance(reopened, tmp_path_factory, "p2-again")
    again, scored = fast_lane(root, 42, bundle, None, EX)
    relocked = closure.lock(root, "P2", again.run_dir, EX)
    return Step(make_read_only(request, root), again.run_id, {"scored": scored, "relocked": relocked})


def test_p0_an_empty_root_waits_for_the_baseline(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert _states(root) == dict.fromkeys(TITLES, "waiting") | {"P0": "open"}
    assert "→ seg1b baseline --seed 42" in _status_text(root)


def test_p0_the_pinned_baseline_its_scorecard_and_checkpoints(p0: Step, tmp_path: Path) -> None:
    root, pin = p0.root, p0.seen["pin"]
    assert _states(root)["P0"] == "done" and _states(root)["P1"] == "open"
    text = _status_text(p0.copy(tmp_path / "root"))
    flag = read_flag(RunRoot(root).upstream(42))
    assert f"baseline_authority/seed=42/grid=300/upstream={flag[:16]}.json  (run {pin['run_id']})" in text
    assert "next: P1: seg1b run --seed 42 --policies DIR (DIR changes s2_tile_weights only)" in text
    assert set(json.loads((p0.run() / "checkpoints" / "checkpoints.json").read_text())) == set(checkpoints.STAGES)


def test_p0_a_lock_while_a_dod_fails_is_refused(p0: Step) -> None:
    """The baseline run as P1."""
    err = _refused("E_DOD_FAILED", closure.lock, p0.root, "P1", p0.run(), EX)
    assert "S2 runs the governed mode blend_v2" in err.message and "concentration improves" in err.message
    assert not (p0.root / "locks" / "P1.json").exists()


def test_p1_s2_changes_and_its_checkpoints_say_where_the_rest_goes_wrong(p1_candidate: Step) -> None:
    root = p1_candidate.root
    items = _items(root, "P1")
    assert (
        items["concentration improves vs P0 on Gini, top1, top5, top10 (S2 mass vs the baseline scorecard)"] == "pass"
    )
    assert items["two same-seed runs reproduce byte for byte"] == "not yet"
    assert _states(root)["P1"] == "ready to close"
    _refused("E_DOD_FAILED", closure.lock, root, "P2", p1_candidate.run(), EX)  # P2 waits for P1
    found = diagnose(root, p1_candidate.run(), "B")
    first = {t.gate: t.first_wrong for t in found.traces}
    assert first["country_gini"] == "S4" and first["top1_share"] == "S4"  # legacy S4 keeps 1A's counts
    assert first["nn_contraction"] == "S8" and first["merchant_countries_median"] is None
    gini = next(t for t in found.traces if t.gate == "country_gini")
    assert gini.inherited and gini.passed["S2"] and not gini.passed["S4"]
    assert gini.baseline["S8"] == pytest.approx(gini.run["S8"])  # same 1A counts as the baseline


def test_p1_lock_reproduces_the_run_and_binds_its_s2(p1_locked: Step, tmp_path: Path) -> None:
    root, record = p1_locked.root, p1_locked.seen["record"]
    assert record["state"] == "locked" and record["run_id"] == p1_locked.run_id
    assert record["accepted_metrics"]["S2"]["metrics"]["country_gini"] < 0.68
    assert "P1 (S2: s2_tile_weights.yaml" in record["freeze_statement"]
    repro = json.loads((root / "reports" / f"repro-{p1_locked.run_id}.json").read_text())
    assert repro["identical"] and len(repro["datasets"]) == p1_locked.seen["outputs"]
    assert _states(root)["P1"] == "done" and _states(root)["P2"] == "open"
    _refused("E_PHASE_LOCKED", closure.lock, root, "P1", p1_locked.run(), EX)
    # A run changing the locked S2 is refused (the lane takes the root's lock: on a copy).
    copy = p1_locked.copy(tmp_path / "root")
    _refused("E_PHASE_LOCKED", fast_lane, copy, 42, BUNDLES / "baseline", None, EX)  # its S2 is the legacy one


def test_p2_one_file_more_passes_its_dod(p2_locked: Step) -> None:
    items = p2_locked.seen["items"]
    assert items["post-S4 concentration and coverage improve vs the pre-P2 posture (P1's run at S4)"] == "pass"
    assert items["no reconcentration breach by integerization (every B gate passing at S2 passes at S4)"] == "pass"
    assert _states(p2_locked.root)["P2"] == "done"


def test_p3_closed_from_the_command_line(p3_locked: Step) -> None:
    root, seen = p3_locked.root, p3_locked.seen
    assert seen["items"]["no stripe or corridor collapse on the top-volume countries (sentinel clear)"] == "pass"
    assert seen["exit_code"] == 0, seen["output"]
    assert seen["output"].startswith(f"P3 locked at run {p3_locked.run_id}: s6_jitter digest ")
    # P3's locked run already holds the three locked files: P4 judges it until a newer candidate.
    assert [_states(root)[p] for p in ("P1", "P2", "P3", "P4")] == ["done", "done", "done", "done"]
    assert next(p for p in plan.status(root) if p.phase == "P4").subject == p3_locked.run_id


def test_p4_the_integrated_candidate_passes_b_not_its_b_plus_attempt(p4: Step, tmp_path: Path) -> None:
    """It passes B, its target (sealed); its B+ attempt does not, and does not hold P4."""
    root, scored = p4.root, p4.seen["scored"]
    assert scored.grade.outcome == "GREEN_B" and scored.card["sealed"]
    items = _items(root, "P4")
    assert items["every B hard gate passes on the candidate's seed"] == "pass"
    assert items["every B+ (attempt) gate passes on the candidate's seed"] == "not yet"
    assert _states(root)["P4"] == "done" and _states(root)["P5"] == "open"
    copy = p4.copy(tmp_path / "root")
    shown = CliRunner().invoke(main, ["diagnose", str(p4.run_id), "--root", str(copy), "--grade", "B+"]).output
    assert "first wrong at S4: country_gini, top10_share, top5_share, top1_share" in shown  # S4's B-level limits


def test_p5_certify_the_required_seeds_and_freeze(p5: Step, p1_locked: Step, tmp_path: Path) -> None:
    """Status then says the plan is complete."""
    root, pack = p5.root, p5.seen["pack"]
    assert pack.report.outcome == "GREEN_B" and sorted(pack.results) == [7, 42, 101, 202]
    assert p5.seen["states"]["P5"] == "ready to close"
    assert p5.seen["exit_code"] == 0, p5.seen["output"]
    frozen = json.loads((root / "reports" / f"freeze-{pack.folder.name}.json").read_text())
    assert frozen["grade"] == "GREEN_B" and set(frozen["phase_locks"]) == {"P1", "P2", "P3"}
    assert set(frozen["run_ids"]) <= set(frozen["retained"]) and p1_locked.run_id in frozen["retained"]
    assert sorted(p.name for p in (root / "runs").iterdir()) == sorted(frozen["retained"])
    assert f"certification/{pack.folder.name}/grade.json" in frozen["artifacts"]
    last_good = json.loads((root / "last_good" / "pointer.json").read_text())
    assert last_good["pack_id"] == pack.folder.name and last_good["frozen"]
    assert set(_states(root).values()) == {"done"}
    assert "next: none: the plan is complete (P5 frozen)" in _status_text(p5.copy(tmp_path / "root"))


def test_a_b_plus_attempt_is_unsealed_and_red(attempt: Step) -> None:
    """The same files targeting B+: S9 refuses to seal, so the run grades RED; its diagnosis
    still shows where B+ first goes wrong."""
    scored = attempt.seen["scored"]
    assert scored.grade.outcome == "RED" and not scored.card["sealed"]
    assert [f.gate for f in scored.grade.failures["B"]] == ["unsealed"]  # its figures pass B: only the seal fails
    assert {"country_gini", "top1_share"} <= {f.gate for f in scored.grade.failures["B_PLUS"]}


def test_a_reopen_needs_a_reason_and_a_contradicting_run(attempt: Step, p4: Step) -> None:
    root = attempt.root
    _refused("E_REOPEN_REFUSED", closure.reopen, root, "P2", "  ", attempt.run())
    err = _refused("E_REOPEN_REFUSED", closure.reopen, root, "P2", REASON, attempt.run(p4.run_id))
    assert "(no gate fails)" in err.message  # at its target, B, the integrated candidate contradicts nothing


def test_reopening_p2_reopens_p3_built_on_it(reopened: Step, attempt: Step, p1_locked: Step) -> None:
    root, lock = reopened.root, reopened.seen["lock"]
    entry = lock["reopened"][-1]
    assert entry["evidence_run"] == attempt.run_id and entry["reason"] == REASON
    assert any(c.startswith("top1_share first wrong at S4") for c in entry["contradiction"])
    assert reopened.seen["cascaded"] == ["P3"]  # built on P2: reopened with it
    assert _states(root)["P1"] == "done" and _states(root)["P2"] == "open" and _states(root)["P3"] == "waiting"
    assert _items(root, "P2")["not the s4_alloc_plan a reopen contradicted"] == "fail"  # the candidate's S4
    p1_digest = json.loads((root / "locks" / "P1.json").read_text())["policy_digest"]
    in_force = closure.check_locks(root, {"s2_tile_weights": p1_digest, "s4_alloc_plan": "b", "s6_jitter": "c"})
    assert [lock["run_id"] for lock in in_force] == [p1_locked.run_id]  # only P1 still binds


def test_p2_closes_again_on_the_remediation_s4(p2_again: Step, p2_locked: Step, attempt: Step) -> None:
    root, relocked = p2_again.root, p2_again.seen["relocked"]
    assert p2_again.seen["scored"].grade.outcome == "GREEN_BPLUS"
    assert relocked["previous"][0]["run_id"] == p2_locked.run_id and relocked["reopened"] == []
    assert relocked["previous"][0]["reopened"][-1]["evidence_run"] == attempt.run_id
    assert _states(root)["P2"] == "done" and _states(root)["P3"] == "open"


def test_checkpoints_are_the_runs_own_figures_and_rebuild_identically(seed42_green: SharedRun, tmp_path: Path) -> None:
    green = seed42_green.copy(tmp_path / "root")  # the shipped bundle's fast lane beside its pinned baseline
    root, result, scored = green.root, green.result, green.scored
    assert scored is not None
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
