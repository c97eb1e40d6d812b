"""The lanes end to end on the real data: scoring refuses unsealed egress, uses the
policies sealed with the run, the fast lane compares to the pinned baseline, and the
baseline bundle certifies RED with exactly its failing gates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import MakeBundle

from seg1b_dask import grading
from seg1b_dask.cli import main
from seg1b_dask.errors import Seg1BError
from seg1b_dask.execution import Execution
from seg1b_dask.hashing import FLAG_NAME
from seg1b_dask.lanes import certify, fast_lane, pin_baseline_run, score_run
from seg1b_dask.policies import load_bundle
from seg1b_dask.runner import BASELINE_POLICIES

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lanes")
    pin_baseline_run(root, 42, Execution())
    return root


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


def test_score_refuses_egress_without_a_valid_flag(root: Path, tmp_path: Path) -> None:
    run_dir = sorted((root / "runs").iterdir())[0]
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    meta = json.loads((run_dir / "run.json").read_text())
    bundle = copy / meta["outputs"]["validation_bundle"]
    egress = copy / meta["outputs"]["site_locations"]
    part = sorted(egress.rglob("part-*.parquet"))[0]
    original = part.read_bytes()
    part.write_bytes(original[:-8] + bytes(8))
    with pytest.raises(Seg1BError) as err:
        score_run(copy, copy / "runs" / run_dir.name)
    assert err.value.code == "E_BUNDLE_FLAG_MISMATCH"
    part.write_bytes(original)
    (bundle / FLAG_NAME).unlink()
    with pytest.raises(Seg1BError) as err:
        score_run(copy, copy / "runs" / run_dir.name)
    assert err.value.code == "E_BUNDLE_FLAG_MISSING"


def test_score_refuses_a_run_receipt_that_disagrees_with_the_sealed_bundle(root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    run_dir = sorted((copy / "runs").iterdir())[0]
    meta = json.loads((run_dir / "run.json").read_text())
    meta["parameter_hash"] = "0" * 64  # e.g. someone loosened the gates and rehashed run.json
    (run_dir / "run.json").write_text(json.dumps(meta))
    with pytest.raises(Seg1BError) as err:
        score_run(copy, run_dir)
    assert err.value.code == "E_TOKEN_MISMATCH"


def test_the_readme_main_command_with_its_default_relative_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["run", "--quiet"])
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "fix-data-engine" / "segment_1B"
    assert (root / "baseline_authority" / "seed=42.json").is_file()  # the seed's baseline is run and pinned first
    assert len(list((root / "runs").glob("*/run.json"))) == 2
    # The default is the remediation bundle: sealed at B+, graded against the pinned baseline.
    assert "every per-seed B+ gate passes" in result.output and "single-seed grade: GREEN_BPLUS" in result.output
    assert "relocated_share" in result.output


def test_scoring_uses_the_policies_sealed_with_the_run(root: Path, make_bundle: MakeBundle) -> None:
    """Editing a bundle's files after its run changes nothing about how the run is scored."""
    policies = make_bundle("baseline")
    result, _ = fast_lane(root, 42, policies, None, Execution())
    gates_file = policies.parent / "gates.yaml"
    gates_file.write_text(gates_file.read_text().replace("B: 0.68", "B: 0.99"))
    scored = score_run(root, result.run_dir)
    gini = [f for f in scored.grade.failures["B"] if f.gate == "country_gini"]
    assert gini and gini[0].threshold == 0.68


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
