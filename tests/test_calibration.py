"""``seg1b calibrate``: trials are reproducible from the search seed, a search resumes
after interruption (trials left running are evaluated again), settings cannot change
under a search, and the feasibility model screens trials out before any S4–S9 work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import SharedRun

from seg1b_dask.chain.runner import DEFAULT_POLICIES
from seg1b_dask.errors import InputError
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.lanes import search as calibration
from seg1b_dask.lanes.calibrate import STUDY, batch_seed, calibrate
from seg1b_dask.policies.bundle import load_bundle
from seg1b_dask.policies.states import CountryAllocationRemass

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]


def _space(tmp_path: Path, **extra: object) -> Path:
    """A small search: two S4 knobs (S2 stays the shipped one), seed 42 only."""
    data = {
        "version": 1,
        "knobs": {
            "s4_alloc_plan.country_allocation.targets.top_share_max.top1": [0.045, 0.06],
            "s4_alloc_plan.country_allocation.max_merchant_share": [0.1, 0.25],
        },
        "margin": 0.005,
        "margin_by_gate": {"nn_contraction": 0.02},
        "min_population_rank_correlation": 0.7,
        **extra,
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "trials.csv").open() as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def root(seed42_green: SharedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's seed-42 root (the pinned baseline, the shipped bundle's run), shared by this module."""
    return seed42_green.copy(tmp_path_factory.mktemp("calibration") / "root").root


def _search(root: Path, space: Path, out: Path, trials: int, **kwargs: object):  # noqa: ANN202
    return calibrate(root, DEFAULT_POLICIES, space, "B_PLUS", [42], out, None, 1, trials, 1, 7, **kwargs)


def test_same_search_seed_same_trials_and_resumable(root: Path, tmp_path: Path) -> None:
    import optuna
    from optuna.distributions import FloatDistribution

    space_path = _space(tmp_path)
    first = _search(root, space_path, tmp_path / "a", 2)
    rows = _rows(tmp_path / "a")
    assert [r["trial"] for r in rows] == ["0", "1"]
    start = calibration.knob_values(DEFAULT_POLICIES, calibration.load_space(space_path))
    assert {k: float(rows[0][k]) for k in start} == pytest.approx(start)  # trial 0 is the start bundle
    assert first.start.passed and first.winner is not None
    passing = [r for r in rows if r["passed"] == "True"]
    assert first.winner.number == int(
        min(passing, key=lambda r: (float(r["relocated_share"]), int(r["trial"])))["trial"]
    )
    winner = load_bundle(first.bundle, refdata_version())
    allocation = winner.s4_alloc_plan.country_allocation
    assert isinstance(allocation, CountryAllocationRemass)
    assert allocation.targets.top_share_max.top1 == pytest.approx(
        first.winner.params["s4_alloc_plan.country_allocation.targets.top_share_max.top1"], abs=1e-6
    )
    assert first.pack is not None and (first.pack.folder / "pack.json").is_file()

    # Interrupted after one trial, with the next one asked but never told: the search
    # resumes, evaluates that trial again and ends with the same table.
    _search(root, space_path, tmp_path / "b", 1)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "b" / "study.journal"))
    )
    study = optuna.load_study(study_name=STUDY, storage=storage)
    study.sampler = optuna.samplers.TPESampler(seed=batch_seed(7, 1))
    space = calibration.load_space(space_path)
    study.ask({k: FloatDistribution(lo, hi) for k, (lo, hi) in space.knobs.items()})  # left running
    events: list[str] = []
    _search(root, space_path, tmp_path / "b", 2, on_event=events.append)
    assert "resuming trial(s) 1" in events
    assert not any(e.startswith("trial 0:") for e in events), "a finished trial is not run again"
    assert _rows(tmp_path / "b") == rows


def test_a_search_refuses_other_settings(root: Path, tmp_path: Path) -> None:
    space_path = _space(tmp_path, min_population_rank_correlation=0.99)
    _search(root, space_path, tmp_path / "c", 1)
    with pytest.raises(InputError) as err:
        calibrate(root, DEFAULT_POLICIES, space_path, "B", [42], tmp_path / "c", None, 1, 2, 1, 7)
    assert err.value.code == "E_BAD_OPTION"


def test_implausible_trials_are_screened_without_running(root: Path, tmp_path: Path) -> None:
    """A plausibility floor no bundle of this space meets: every trial is told infeasible
    from the feasibility model alone, and no winner is certified."""
    space_path = _space(tmp_path, min_population_rank_correlation=0.99)
    runs = root / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    result = _search(root, space_path, tmp_path / "d", 2)
    assert [t.stage for t in result.trials] == ["screened", "screened"]
    assert all(t.worst_gate.startswith("population rank correlation") for t in result.trials)
    assert all(0.7 < t.rank_correlation < 0.99 for t in result.trials)  # plausible, but not this plausible
    assert result.winner is None and result.pack is None
    made = [json.loads((p / "run.json").read_text())["policy_bundle"] for p in set(runs.iterdir()) - before]
    assert set(made) <= {"baseline"}, f"no trial bundle was run: {made}"


def test_any_search_seed_gives_a_32_bit_sampler_seed() -> None:
    seeds = {batch_seed(s, first) for s in (0, 7, 2**32, 2**64 - 1) for first in (0, 1, 2)}
    assert len(seeds) == 12 and all(0 <= s < 2**32 for s in seeds)


def test_cv_margins_come_from_their_family() -> None:
    space = calibration.load_space(calibration.SPACE_FILE)
    assert space.margin_for("cv:top1_share") == space.margin_by_gate["cv"] == 0.02
    assert space.margin_for("top1_share") == space.margin and space.margin_for("sentinel_flagged") == 0.0


def test_cli_summary_when_no_trial_passes(root: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from seg1b_dask.cli import main

    space_path = _space(tmp_path, min_population_rank_correlation=0.99)
    args = ["calibrate", "--root", str(root), "--out", str(tmp_path / "e"), "--space", str(space_path)]
    result = CliRunner().invoke(main, [*args, "--seeds", "42", "--trials", "1", "--parallel", "1", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "1 trials, 1 screened out by the feasibility model, 0 run, 0 passing B+ with margins" in result.output
    assert "no trial passed B+ with the margins" in result.output
    assert (tmp_path / "e" / "trials.csv").read_text().count("\n") == 2


def test_a_misspelt_search_space_key_is_one_coded_line(tmp_path: Path) -> None:
    data = yaml.safe_load(calibration.SPACE_FILE.read_text())
    data["margins"] = data.pop("margin")  # the shipped space's key, misspelt
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(InputError) as err:
        calibration.load_space(path)
    assert err.value.code == "E_POLICY_UNKNOWN_KEY" and err.value.key == "margins"
    assert "did you mean margin?" in err.value.message
