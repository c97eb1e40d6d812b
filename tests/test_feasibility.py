"""``seg1b feasibility``: the predicted country gates agree with a real run, and the least
relocation of each grade is a true optimum of its programme."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from seg1b_dask.chain.runner import BASELINE_POLICIES, DEFAULT_POLICIES
from seg1b_dask.cli import main
from seg1b_dask.core import metrics, share_lp
from seg1b_dask.engine.execution import Execution
from seg1b_dask.grading import gates as grading
from seg1b_dask.io.refdata import REGIONS, refdata_version
from seg1b_dask.lanes import feasibility
from seg1b_dask.lanes.fast import fast_lane, feasibility_of
from seg1b_dask.model.mass import CountryVector
from seg1b_dask.policies.bundle import load_bundle

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feasibility") / "root"


@pytest.mark.slow
@pytest.mark.parametrize("policies", [BASELINE_POLICIES, DEFAULT_POLICIES], ids=["baseline", "remediation"])
def test_prediction_agrees_with_the_run(root: Path, policies: Path) -> None:
    predicted = feasibility_of(root, 42, policies, None, Execution())
    _, scored = fast_lane(root, 42, policies, None, Execution())
    observed = scored.card["metrics"]
    for metric in metrics.COUNTRY_METRICS:
        assert abs(predicted.card["metrics"][metric] - observed[metric]) <= 0.005, metric
    for metric in ("country_gini", "top1_share", "top5_share", "top10_share", "eligible_country_nonzero_share"):
        assert predicted.card["metrics"][metric] == pytest.approx(observed[metric], abs=1e-12), metric  # exact
    for region in REGIONS:
        assert predicted.card["region_share"][region] == pytest.approx(scored.card["region_share"][region], abs=1e-12)
    assert predicted.relocated_share == pytest.approx(scored.card["fidelity"]["relocated_share"], abs=1e-6)
    for level, least in predicted.least.items():  # every grade line shows the same bound beside it
        assert scored.card["price"]["least"][level] == pytest.approx(least.relocated_share, abs=1e-12)


def test_baseline_is_not_reachable_without_relocation(root: Path) -> None:
    result = feasibility_of(root, 42, BASELINE_POLICIES, None, Execution())
    assert result.relocated_share == 0.0 and not result.passes("B") and not result.passes("B_PLUS")
    b, b_plus = result.least["B"], result.least["B_PLUS"]
    assert b.feasible and b_plus.feasible
    assert 0.0 < b.relocated_share < b_plus.relocated_share < 1.0
    assert result.verdict("B").startswith("B: not reachable without relocation; reachable only by relocating at least")
    remediation = feasibility_of(root, 42, DEFAULT_POLICIES, None, Execution())
    # the shipped bundle pays more than the least any target vector needs, never less
    assert remediation.passes("B_PLUS") and remediation.relocated_share >= b_plus.relocated_share
    assert remediation.least["B_PLUS"].relocated_share == pytest.approx(b_plus.relocated_share, abs=1e-9)


def _inputs(root: Path) -> feasibility.CountryInputs:
    from seg1b_dask.io.datasets import COUNTRY_MASS
    from seg1b_dask.io.upstream import CATALOGUE

    baseline = load_bundle(BASELINE_POLICIES, refdata_version()).parameter_hash
    (table,) = (root / "data" / "country_mass" / f"parameter_hash={baseline}").iterdir()
    return feasibility.read_inputs(
        root / "upstream" / "1A" / "seed=42", CATALOGUE, COUNTRY_MASS.read(table).to_pydict()
    )


@pytest.mark.parametrize("level", grading.LEVELS)
def test_the_bound_costs_what_is_reported_and_margins_have_a_price(root: Path, level: grading.Level) -> None:
    feasibility_of(root, 42, BASELINE_POLICIES, None, Execution())  # S2's table in the root
    inputs = _inputs(root)
    gates = load_bundle(BASELINE_POLICIES, refdata_version()).gates
    least = feasibility.least_relocation(inputs, gates, level)
    a = inputs.a_count / inputs.total
    assert least.feasible and least.share.sum() == pytest.approx(1.0)
    assert 0.5 * np.abs(least.share - a).sum() == pytest.approx(least.relocated_share, abs=1e-7)
    card = feasibility.country_card(least.share, inputs)  # the relaxation's own linear gates hold
    assert card["metrics"]["southern_hemisphere_share"] >= getattr(gates.southern_hemisphere_share_min, level) - 1e-7
    for region, floor in gates.region_floor_share.items():
        assert card["region_share"][region] >= floor - 1e-7
    tighter = feasibility.least_relocation(inputs, gates, level, margin=0.01)
    assert tighter.relocated_share > least.relocated_share  # a stated margin has a price


def _toy(n: int, a_count: np.ndarray, south: np.ndarray) -> feasibility.CountryInputs:
    regions = np.asarray(["Africa", "Asia", "Europe", "North America", "South America", "Oceania"] * n, dtype="U16")[:n]
    vector = CountryVector(
        share=np.full(n, 1 / n),
        eligible=np.ones(n, dtype=bool),
        region=regions,
        south=south,
        population=np.arange(n, 0, -1, dtype=np.float64),
    )
    return feasibility.CountryInputs(
        np.asarray([f"C{i:02d}" for i in range(n)]),
        a_count.astype(np.int64),
        vector,
        np.zeros(0, dtype=np.int64),
        np.zeros(0, dtype=np.int64),
    )


def test_the_bound_does_not_fix_which_countries_hold_outlets() -> None:
    """15 northern 1A countries, 5 empty ones of which the two least populous are southern:
    B (coverage 17 of 20, south ≥ 0.12) is reached by moving 0.12 to those two, the least
    any vector can move (the southern share needs it), whichever countries the coverage
    gate would have picked by population."""
    a = np.r_[np.full(15, 100), np.zeros(5)]
    south = np.r_[np.zeros(18), np.ones(2)]
    gates = load_bundle(BASELINE_POLICIES, refdata_version()).gates
    least = feasibility.least_relocation(_toy(20, a, south), gates, "B")
    assert least.feasible and least.relocated_share == pytest.approx(0.12, abs=1e-6)


def test_the_bound_holds_at_any_number_of_outlets() -> None:
    """A Zipf-shaped 1A over 40 of 100 countries, at 30 k and at 100 M outlets: both grades
    stay reachable, and the bound moves only by what a whole outlet (1/N of all) is worth.
    At 100 M a whole outlet is 1e-8 of all: counted as a share, the coverage rows sank
    under the solver's tolerances and the programme read as infeasible."""
    n, m = 100, 40
    zipf = np.r_[1.0 / np.arange(1, m + 1) ** 1.2, np.zeros(n - m)]
    south = np.r_[np.zeros(m - 7), np.ones(7), (np.arange(n - m) % 4 == 0).astype(float)]
    gates = load_bundle(BASELINE_POLICIES, refdata_version()).gates
    for level in grading.LEVELS:
        small, large = (
            feasibility.least_relocation(_toy(n, np.floor(zipf / zipf.sum() * total), south), gates, level)
            for total in (30_000, 100_000_000)
        )
        assert small.feasible and large.feasible, level
        assert large.relocated_share <= small.relocated_share + 1e-9
        assert large.relocated_share == pytest.approx(small.relocated_share, abs=2e-3)


@pytest.mark.parametrize("seed", range(6))
def test_interchangeable_countries_as_one_entry_give_the_same_optimum(seed: int) -> None:
    """``copies``: 1A's countries one by one, the empty ones grouped by region and southern
    fraction, against the same programme over every country: the same least relocation
    and, where the optimum is unique, the same shares (random instances, every limit on)."""
    g = np.random.default_rng(seed)
    n = 60
    a = np.where(g.random(n) < 0.4, g.pareto(1.2, n) + 0.1, 0.0)
    a /= a.sum()
    region = g.choice(np.asarray(REGIONS[:4]), n)
    south = np.where(a > 0, g.random(n), g.choice([0.0, 1.0], n))
    cover = int(0.8 * n)
    limits = {
        "gini_max": 0.6,
        "gini_active": cover,
        "top_max": ((1, 0.08), (max(1, cover // 10), 0.4)),
        "coverage": (cover, 1e-6),
        "south_min": 0.15,
        "region_min": {str(r): 0.05 for r in REGIONS[:4]},
    }
    whole = share_lp.closest_shares(
        a, share_lp.ShareLimits(np.zeros(n), np.full(n, np.inf), south=south, region=region, **limits)
    )
    first, entry, copies = feasibility._interchangeable(a, region, south)
    assert len(first) < n and copies.sum() == n
    grouped = share_lp.closest_shares(
        a[first],
        share_lp.ShareLimits(
            np.zeros(len(first)), np.full(len(first), np.inf), south=south[first], region=region[first], **limits
        ),
        copies=copies,
    )
    assert whole.feasible and grouped.feasible
    assert grouped.distance == pytest.approx(whole.distance, abs=1e-7)
    assert grouped.share[entry].sum() == pytest.approx(1.0, abs=1e-7)


def test_fewer_outlets_than_countries_to_cover_is_not_reachable() -> None:
    least = feasibility.least_relocation(
        _toy(40, np.r_[np.full(5, 2), np.zeros(35)], np.zeros(40)),
        load_bundle(BASELINE_POLICIES, refdata_version()).gates,
        "B",
    )
    assert not least.feasible and "fewer outlets than countries" in least.message


def test_cli_prints_the_price_of_each_grade(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "feasibility.json"
    result = CliRunner().invoke(
        main, ["feasibility", "--root", str(root), "--policies", str(BASELINE_POLICIES), "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "B: not reachable without relocation; reachable only by relocating at least" in result.output
    assert "B+: not reachable without relocation; reachable only by relocating at least" in result.output
    data = json.loads(out.read_text())
    assert data["least_relocation"]["B"]["relocated_share"] > 0 and len(data["verdict"]) == 2
