"""The lanes end to end on the real data: scoring takes the seal and the structural checks
from the validation bundle (never from run.json) and uses the policies sealed with the run,
the fast lane compares to the baseline pinned for its seed, grid and 1A bundle, a grade
below the bundle's target fails a certification, and the baseline bundle certifies RED
with exactly its failing gates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import MakeBundle, SharedRun, patch_yaml

from seg1b_dask.chain.runner import BASELINE_POLICIES, DEFAULT_POLICIES, RunResult, run_seed
from seg1b_dask.cli import main
from seg1b_dask.engine.execution import Execution
from seg1b_dask.errors import Seg1BError
from seg1b_dask.grading import gates as grading
from seg1b_dask.io import discipline
from seg1b_dask.io.hashing import FLAG_NAME, read_flag, seal_bundle
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.io.upstream import write_bundle
from seg1b_dask.lanes.certify import certify
from seg1b_dask.lanes.fast import fast_lane
from seg1b_dask.lanes.score import score_run
from seg1b_dask.policies.bundle import load_bundle
from seg1b_dask.states import s9_validation

pytestmark = pytest.mark.e2e


@pytest.fixture
def root(seed42_green: SharedRun, tmp_path: Path) -> Path:
    """A copy of the session's seed-42 root: the pinned baseline and the shipped bundle's run
    (``green``), the current candidate."""
    return seed42_green.copy(tmp_path / "root").root


def test_fast_lane_reruns_from_first_dirty_state_and_compares_to_baseline(root: Path, make_bundle: MakeBundle) -> None:
    policies = make_bundle(s4_alloc_plan={"tile_allocation": {"tie_break": "keyed"}})
    result, scored = fast_lane(root, 42, policies, None, Execution())
    assert [s.id for s in result.states if s.reused] == ["S1", "S2", "S3"]
    assert scored.card["baseline"]["seed"] == 42
    m = scored.card["metrics"]
    assert m["nn_contraction"] == pytest.approx(
        (scored.card["baseline"]["nn_ratio"] - m["nn_ratio"]) / scored.card["baseline"]["nn_ratio"]
    )
    assert scored.delta["country_gini"] == 0.0  # legacy country allocation: 1A counts
    pointer = json.loads((root / "current_candidate" / "pointer.json").read_text())
    assert pointer["run_id"] == result.run_id
    for name in ("scorecard.json", "country_shares.csv", "region_shares.csv", "nn_quantiles.csv", "sentinel.csv"):
        assert (result.run_dir / "scorecard" / name).is_file()
    # The page of the run, the candidate beside its pinned baseline.
    page = (result.run_dir / "report.html").read_text()
    assert "baseline · seed 42" in page and "candidate · seed 42" in page
    shares = (result.run_dir / "scorecard" / "country_shares.csv").read_text().splitlines()
    assert shares[1].startswith("DE,4269,")


@pytest.fixture(scope="module")
def green(seed42_green: SharedRun) -> RunResult:
    """The default bundle's run of seed 42: sealed at B+, GREEN_BPLUS beside its baseline."""
    assert seed42_green.scored is not None and seed42_green.scored.grade.outcome == "GREEN_BPLUS"
    return seed42_green.result


def _copied(shared: SharedRun, run_id: str, tmp_path: Path) -> tuple[Path, dict, Path]:
    """A copy of the run root to damage: the run's folder, its run.json and its bundle."""
    copy = shared.copy(tmp_path / "copy").root
    run_dir = copy / "runs" / run_id
    meta = json.loads((run_dir / "run.json").read_text())
    return run_dir, meta, copy / meta["outputs"]["validation_bundle"]


def _forge_s9(run_dir: Path, **stats: object) -> None:
    """Edit S9's record in run.json, which no seal covers."""
    meta = json.loads((run_dir / "run.json").read_text())
    next(s for s in meta["states"] if s["id"] == "S9")["stats"].update(stats)
    (run_dir / "run.json").write_text(json.dumps(meta))


def _score_cli(copy: Path, run_dir: Path) -> str:
    result = CliRunner().invoke(main, ["score", run_dir.name, "--root", str(copy)])
    assert result.exit_code == 0, result.output
    return result.output


def test_score_refuses_egress_bytes_the_flag_did_not_seal(seed42_green: SharedRun, tmp_path: Path) -> None:
    run_dir, meta, _ = _copied(seed42_green, sorted((seed42_green.root / "runs").iterdir())[0].name, tmp_path)
    part = sorted((tmp_path / "copy" / meta["outputs"]["site_locations"]).rglob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:-8] + bytes(8))
    with pytest.raises(Seg1BError) as err:
        score_run(tmp_path / "copy", run_dir)
    assert err.value.code == "E_BUNDLE_FLAG_MISMATCH"


@pytest.mark.parametrize("damage", ["no flag", "wrong flag", "no index"])
def test_a_green_run_without_a_valid_flag_grades_red(
    seed42_green: SharedRun, green: RunResult, tmp_path: Path, damage: str
) -> None:
    """The figures pass B+ and run.json says sealed; without a valid flag over the bundle
    nothing vouches for them: RED, labelled unverified, and the reason named."""
    run_dir, _, bundle = _copied(seed42_green, green.run_id, tmp_path)
    if damage == "no flag":
        (bundle / FLAG_NAME).unlink()
    elif damage == "wrong flag":
        (bundle / FLAG_NAME).write_text(f"sha256_hex = {'0' * 64}\n")
    else:
        (bundle / "index.json").unlink()
    _forge_s9(run_dir, sealed=True, passed=True, failed_checks=[])
    scored = score_run(tmp_path / "copy", run_dir)
    assert scored.grade.outcome == "RED" and not scored.card["sealed"]
    assert [f.gate for f in scored.grade.failures["B"]] == ["unsealed"]  # every figure passes
    code = {"no flag": "E_BUNDLE_FLAG_MISSING", "wrong flag": "E_BUNDLE_FLAG_MISMATCH", "no index": "E_BUNDLE_INDEX"}
    assert scored.card["unsealed_because"].startswith(code[damage])
    shown = _score_cli(tmp_path / "copy", run_dir)
    assert f"UNVERIFIED: no valid 1B flag ({code[damage]}" in shown and "single-seed grade: RED" in shown
    assert shown.rstrip().endswith("RED — below the bundle's target grade B+: unsealed")
    assert CliRunner().invoke(main, ["report", run_dir.name, "--root", str(tmp_path / "copy")]).exit_code == 0
    assert "no, every figure is unverified" in (run_dir / "report.html").read_text()


def test_an_unsealed_run_stays_red_whatever_run_json_says(root: Path) -> None:
    """S9 refused the flag (its baseline ratio made the B+ contraction fail); scored against
    the real pin, its figures would pass. Neither that nor a forged receipt lifts it."""
    copy = root
    refused = run_seed(root=copy, seed=42, policies=DEFAULT_POLICIES, baseline_nn_ratio=1.0)
    assert not refused.validation["sealed"] and refused.validation["failed_gates"] == ["nn_contraction"]
    honest = score_run(copy, refused.run_dir)
    assert honest.grade.outcome == "RED" and [f.gate for f in honest.grade.failures["B"]] == ["unsealed"]
    assert honest.card["metrics"]["nn_contraction"] > 0.35  # against the pin: the figures alone would pass
    _forge_s9(refused.run_dir, sealed=True, passed=True, failed_gates=[])
    forged = score_run(copy, refused.run_dir)
    assert forged.grade.outcome == "RED" and not forged.card["sealed"]
    assert "UNVERIFIED: no valid 1B flag (E_BUNDLE_FLAG_MISSING" in _score_cli(copy, refused.run_dir)


def test_sealed_checks_that_fail_grade_red(seed42_green: SharedRun, green: RunResult, tmp_path: Path) -> None:
    """A validly sealed bundle whose checks.json records a failing check: RED on that check,
    though run.json says every check passed."""
    run_dir, _, bundle = _copied(seed42_green, green.run_id, tmp_path)
    checks = json.loads((bundle / "checks.json").read_text())
    checks["point_in_country"]["passed"] = False
    (bundle / "checks.json").write_text(json.dumps(checks))
    index = json.loads((bundle / "index.json").read_text())
    (bundle / FLAG_NAME).unlink()
    seal_bundle(bundle, {k: v for k, v in index.items() if k != "files"})
    scored = score_run(tmp_path / "copy", run_dir)
    assert scored.card["sealed"] and scored.grade.outcome == "RED"
    assert [f.gate for f in scored.grade.failures["B"]] == ["structural:point_in_country"]
    shown = _score_cli(tmp_path / "copy", run_dir)
    assert "STRUCTURAL FAIL: point_in_country" in shown and "UNVERIFIED" not in shown


def test_a_structurally_failed_run_is_published_and_scores_red(
    root: Path, make_bundle: MakeBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner publishes the run before it refuses it: ``seg1b score`` on that folder
    grades RED on the failing check, whatever its realism figures."""
    copy = root
    real = s9_validation.inside_country

    def one_site_outside(lon: object, lat: object, cid: object) -> object:
        inside = real(lon, lat, cid)
        inside[:1] = False
        return inside

    monkeypatch.setattr(s9_validation, "inside_country", one_site_outside)
    policies = make_bundle("baseline", gates={"bootstrap_replicates": 999})  # S9 recomputes
    with pytest.raises(Seg1BError) as err:
        run_seed(root=copy, seed=42, policies=policies, execution=Execution(scheduler="threads"))
    assert err.value.code == "E_VALIDATION_FAILED" and "point_in_country" in err.value.message
    monkeypatch.undo()
    run_id = err.value.message.split("(run ", 1)[1].split()[0]
    shown = _score_cli(copy, copy / "runs" / run_id)
    assert "STRUCTURAL FAIL: point_in_country" in shown and "UNVERIFIED: no valid 1B flag" in shown
    assert "single-seed grade: RED" in shown and "structural:point_in_country" in shown


def test_score_refuses_a_run_receipt_that_disagrees_with_the_sealed_bundle(root: Path) -> None:
    copy = root
    run_dir = sorted((copy / "runs").iterdir())[0]
    meta = json.loads((run_dir / "run.json").read_text())
    meta["parameter_hash"] = "0" * 64  # e.g. someone loosened the gates and rehashed run.json
    (run_dir / "run.json").write_text(json.dumps(meta))
    with pytest.raises(Seg1BError) as err:
        score_run(copy, run_dir)
    assert err.value.code == "E_TOKEN_MISMATCH"


@pytest.mark.slow
def test_the_readme_main_command_with_its_default_relative_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["run", "--quiet"])
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "fix-data-engine" / "segment_1B"
    pin = RunRoot(root).pin(42, 300, read_flag(RunRoot(root).upstream(42)))
    assert pin.is_file()  # the seed's baseline on the bundle's grid and stand-in is run and pinned first
    assert len(list((root / "runs").glob("*/run.json"))) == 2
    # The default is the remediation bundle: sealed at B+, graded against the pinned baseline.
    assert "every per-seed B+ gate passes" in result.output and "single-seed grade: GREEN_BPLUS" in result.output
    assert "relocated_share" in result.output


@pytest.mark.slow
def test_baselines_are_pinned_per_grid_and_1a_bundle(root: Path, make_bundle: MakeBundle, tmp_path: Path) -> None:
    """A coarser grid's candidate and another 1A bundle's candidate each get their own
    baseline: the baseline bundle run on the candidate's grid over the candidate's 1A
    bundle. The seed's default pin is untouched and the pins coexist."""
    rr = RunRoot(root)
    standin = read_flag(rr.upstream(42))
    default_pin = rr.pin(42, 300, standin)
    before = default_pin.read_bytes()
    shipped = load_bundle(BASELINE_POLICIES, "v").digests

    coarse = make_bundle("baseline", grid={"resolution_arcsec": 600}, s9_validation={"target_grade": "B"})
    _, scored = fast_lane(root, 42, coarse, None, Execution())
    pin = json.loads(rr.pin(42, 600, standin).read_text())
    assert scored.card["baseline"] == pin and pin["grid_arcsec"] == 600 and pin["upstream_flag"] == standin
    pinned = json.loads((rr.run(pin["run_id"]) / "run.json").read_text())
    assert pinned["policy_bundle"] == "baseline" and pinned["policies"]["grid"]["resolution_arcsec"] == 600
    assert {k for k, v in pinned["policy_digests"].items() if v != shipped[k]} == {"grid"}
    m = scored.card["metrics"]
    assert m["nn_contraction"] == pytest.approx((pin["nn_ratio"] - m["nn_ratio"]) / pin["nn_ratio"])
    assert pin["nn_ratio"] != json.loads(before)["nn_ratio"]  # another grid, another NN tail

    other = tmp_path / "1A-other"
    flag = write_bundle(42, other, scale=1)  # one merchant block: as large as the stand-in, other merchants
    _, scored = fast_lane(root, 42, make_bundle("baseline", s9_validation={"target_grade": "B"}), other, Execution())
    pin = json.loads(rr.pin(42, 300, flag).read_text())
    assert scored.card["baseline"] == pin and pin["upstream_flag"] == flag != standin
    assert json.loads((rr.run(pin["run_id"]) / "run.json").read_text())["upstream"] == str(other)

    assert default_pin.read_bytes() == before
    assert len([p for p in rr.pin_files() if p.is_relative_to(rr.pins / "seed=42")]) == 3
    kept = discipline.prune(root, dry_run=True)["kept_runs"]
    assert all(json.loads(p.read_text())["run_id"] in kept for p in rr.pin_files())
    shown = CliRunner().invoke(main, ["baseline", "--seed", "42", "--root", str(root), "--policies", str(coarse)])
    assert shown.exit_code == 0 and shown.output.startswith(f"baseline for seed 42 (600″ grid, 1A {standin[:16]}): ")


@pytest.mark.slow
def test_a_grade_below_the_target_is_loud_and_fails_certification(root: Path, make_bundle: MakeBundle) -> None:
    """The baseline posture declared to target B: ``run`` still exits 0 but ends on one loud
    line; ``certify`` writes the pack, prints it, and exits 1."""
    policies = make_bundle("baseline", s9_validation={"target_grade": "B"}, gates={"required_seeds": [42]})
    ran = CliRunner().invoke(main, ["run", "--root", str(root), "--policies", str(policies), "--quiet"])
    assert ran.exit_code == 0, ran.output
    assert ran.output.rstrip().splitlines()[-1].startswith("RED — below the bundle's target grade B: unsealed, ")
    packs = len(RunRoot(root).packs())
    args = ["certify", "--root", str(root), "--policies", str(policies), "--workers", "1", "--quiet"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 1, done.output
    last = done.output.rstrip().splitlines()[-1]
    assert last.startswith("CERTIFICATION FAILED: RED — below the bundle's target grade B: unsealed, country_gini")
    assert "GRADE: RED" in done.output and len(RunRoot(root).packs()) == packs + 1  # the pack is written first


def test_scoring_uses_the_policies_sealed_with_the_run(root: Path, make_bundle: MakeBundle) -> None:
    """Editing a bundle's files after its run changes nothing about how the run is scored."""
    policies = make_bundle("baseline")
    result, _ = fast_lane(root, 42, policies, None, Execution())
    patch_yaml(policies.parent / "gates.yaml", {"country_gini_max": {"B": 0.99}})
    assert load_bundle(policies, refdata_version()).gates.country_gini_max.B == 0.99  # the files say 0.99 now
    scored = score_run(root, result.run_dir)
    gini = [f for f in scored.grade.failures["B"] if f.gate == "country_gini"]
    assert gini and gini[0].threshold == 0.68


@pytest.mark.slow
def test_baseline_certifies_red_with_exactly_its_failing_gates(root: Path) -> None:
    pack = certify(root, None, BASELINE_POLICIES, workers=2)  # default: the gates' required seeds
    gates = load_bundle(BASELINE_POLICIES, "v").gates
    assert list(pack.results) == [42, 7, 101, 202] == list(gates.required_seeds)
    assert pack.report.outcome == "RED"
    expected = set()
    for seed, scored in pack.scored.items():
        m = scored.card["metrics"]
        for metric, field, direction in grading.METRIC_GATES:
            limit = getattr(gates, field).B
            if not (m[metric] <= limit if direction == "max" else m[metric] >= limit):
                expected.add((metric, seed))
        for region, floor in gates.region_floor_share.items():
            if scored.card["region_share"][region] < floor:
                expected.add((f"region_floor:{region}", seed))
    got = {(f.gate, f.seed) for f in pack.report.failures["B"]}
    assert got == expected
    assert {g for g, _ in got} >= {
        "country_gini",
        "top1_share",
        "top5_share",
        "top10_share",
        "eligible_country_nonzero_share",
        "southern_hemisphere_share",
        "nn_contraction",
    }
    m42 = pack.scored[42].card["metrics"]
    assert (
        round(m42["country_gini"], 4),
        round(m42["top1_share"], 4),
        round(m42["top5_share"], 4),
        round(m42["top10_share"], 4),
        m42["active_countries"],
    ) == (0.7528, 0.1366, 0.3933, 0.5974, 77)
    assert (pack.folder / "dask-report.html").stat().st_size > 10_000
    cv_rows = (pack.folder / "cv.csv").read_text().splitlines()
    assert (
        cv_rows[0] == "metric,seed_42,seed_7,seed_101,seed_202,mean,cv"
        and len(cv_rows) == len(grading.METRIC_GATES) + 1
    )

    with pytest.raises(Seg1BError) as err:
        certify(root, [42, 7, 101, 202], BASELINE_POLICIES, workers=2, promote=True)
    assert err.value.code == "E_PROMOTION_REFUSED"
    assert not (root / "last_good" / "pointer.json").exists()
    # Nor can a RED pack be frozen as the authority: one coded line, nothing written.
    result = CliRunner().invoke(main, ["freeze", pack.folder.name, "--root", str(root)])
    assert result.exit_code == 2
    assert result.output.startswith("error: E_FREEZE_REFUSED: only a GREEN pack can be frozen; this one is RED (")
    assert not (root / "last_good" / "pointer.json").exists() and not list(root.glob("reports/freeze-*"))
    unknown = CliRunner().invoke(main, ["freeze", "no-such-pack", "--root", str(root)])
    assert unknown.exit_code == 2 and "E_UNKNOWN_RUN" in unknown.output
