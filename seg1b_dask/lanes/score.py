"""Scoring a finished run, and the baselines its NN contraction is graded against.

A grade comes from what the run's validation bundle vouches for (``verdict``), never from
``run.json``. A baseline is pinned per seed, grid resolution and 1A bundle: a candidate is
graded against a run of the baseline bundle on its own grid over its own 1A bundle."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seg1b_dask.chain.runner import BASELINE_POLICIES, RunResult, ensure_standin, run_seed
from seg1b_dask.engine.execution import Execution
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.grading import gates as grading
from seg1b_dask.grading import scoring
from seg1b_dask.io import discipline, packs
from seg1b_dask.io.discipline import PinKey
from seg1b_dask.io.hashing import read_flag
from seg1b_dask.io.lineage import safe_join
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.io.runroot import RunRoot, shared_root
from seg1b_dask.io.verdict import bundle_verdict
from seg1b_dask.lanes import feasibility
from seg1b_dask.policies.bundle import PolicyBundle, bundle_from_canonical, load_bundle, sealed_bundle
from seg1b_dask.policies.states import GridPolicy
from seg1b_dask.states.triage import triage_hints


@dataclass
class Scored:
    run_dir: Path
    seed: int
    card: dict[str, Any]
    grade: grading.GradeReport
    bootstrap: dict[str, float]
    structural: list[str]  # the structural gates it fails (``verdict.Verdict.failures``)
    key: PinKey  # the pin it is graded against
    delta: dict[str, float] = field(default_factory=dict)


FIDELITY_KEYS = (
    "relocated_share",
    "countries_over_target",
    "countries_under_target",
    "lone_sites_moved",
    "cell_cap_doublings",
    "homes_with_widened_caps",
    "merchants_over_new_country_limit",
    "merchant_retention_median",
    "merchant_retention_p10",
    "new_pair_share",
    "merchants_lost_home",
    "home_outlets_kept_share",
    "move_km_median",
    "move_km_p90",
    "new_pair_home_km_median",
    "new_pair_home_km_p90",
    "new_countries_median",
    "new_countries_p90",
    "new_countries_max",
)


def _fidelity(meta: dict[str, Any]) -> dict[str, Any]:
    """The price of realism, as S4 measured it: relocation and merchant footprints."""
    s4 = next(s["stats"] for s in meta["states"] if s["id"] == "S4")
    return {k: v for k, v in s4.items() if k in FIDELITY_KEYS or k.endswith(("_1a", "_1b"))}


def score_run(root: Path, run: Path, pin_as_baseline: bool = False) -> Scored:
    """Score one run and write ``scorecard/`` into it. The metrics are those S9 computed over
    every part of the egress. The seal and the structural checks are read from the validation
    bundle: a run without a valid 1B flag, or whose sealed checks fail, grades RED whatever
    its figures say (they are then S9's unverified record, kept for diagnosis). The rows are
    read again only for the bootstrap of a sealed run whose S9 did not record it. With
    ``pin_as_baseline`` the run becomes the baseline of its seed, grid and 1A bundle in the
    same pass (contraction 0)."""
    root = Path(root).resolve()
    meta = discipline.load_run(run, needs=("states", "policies"))
    bundle = sealed_bundle(meta)
    gates = bundle.gates
    judged = bundle_verdict(meta, root)
    card = scoring.read_scorecard(judged.folder)
    key = discipline.run_pin_key(root, meta)
    baseline = discipline.baseline_pointer(root, key)
    if pin_as_baseline:  # checked now, committed only once the scorecard is on disk
        if not judged.sealed:
            raise Seg1BError(
                Code.E_VALIDATION_FAILED, f"an unsealed run cannot be a baseline ({judged.problem})", file=judged.folder
            )
        baseline = discipline.baseline_payload(root, run, card["metrics"]["nn_ratio"])
    scoring.set_baseline(card["metrics"], baseline["nn_ratio"] if baseline else None)
    upper: dict[str, float] = card.get("bootstrap_upper_95", {})
    if not upper and judged.egress is not None:
        matrix, _ = scoring.merchant_country_matrix(*scoring.egress_pairs(judged.egress))
        upper = grading.bootstrap_upper(matrix, gates.bootstrap_replicates, gates.bootstrap_seed + meta["seed"])
    report = grading.grade(
        {meta["seed"]: card},
        gates,
        {meta["seed"]: judged.failures},
        {meta["seed"]: upper} if upper else None,
        required_seeds=(meta["seed"],),
        hints=triage_hints(bundle),
    )
    delta: dict[str, float] = {}
    if baseline and baseline["run_id"] != meta["run_id"]:
        base_card = packs.scorecard_json(RunRoot(root).run(baseline["run_id"]))
        if base_card.is_file():
            base = json.loads(base_card.read_text())["metrics"]
            delta = {
                k: card["metrics"][k] - base[k]
                for k, _, _ in grading.METRIC_GATES
                if k in base and k != "nn_contraction"
            }
            delta["nn_ratio"] = card["metrics"]["nn_ratio"] - base["nn_ratio"]
    card["grade_single_seed"] = report.as_dict()
    card["bootstrap_upper_95"] = upper
    card["baseline"] = baseline
    card["fidelity"] = _fidelity(meta)
    outputs = {name: safe_join(root, rel) for name, rel in meta["outputs"].items()}
    card["price"] = feasibility.price(RunRoot(root), outputs, gates, card["fidelity"]["relocated_share"])
    card["sealed"] = judged.sealed
    card["unsealed_because"] = judged.problem
    card["failed_checks"] = list(judged.failed_checks)
    card["target_grade"] = bundle.s9_validation.target_grade
    scoring.write_scorecard(card, packs.scorecard_dir(run))
    if pin_as_baseline:
        discipline.pin_baseline(root, run, card["metrics"]["nn_ratio"])
    return Scored(run, meta["seed"], card, report, upper, judged.failures, key, delta)


# -- baselines ----------------------------------------------------------------------


def baseline_bundle(grid: GridPolicy | None = None) -> PolicyBundle:
    """The shipped baseline bundle on ``grid`` (default: its own), built in memory from its
    files with the grid policy substituted."""
    shipped = load_bundle(BASELINE_POLICIES, refdata_version())
    if grid is None:
        return shipped
    canonical = {**shipped.canonical(), "grid": grid.model_dump(mode="json")}
    return bundle_from_canonical(shipped.name, canonical, refdata_version())


def candidate_key(root: Path, seed: int, grid: GridPolicy, upstream: Path | None) -> PinKey:
    """The pin a run of ``seed`` on ``grid`` over ``upstream`` (default: the seed's stand-in,
    written now if missing) is graded against."""
    upstream_dir = Path(upstream) if upstream else ensure_standin(RunRoot(Path(root)), seed)
    return PinKey(seed, grid.resolution_arcsec, read_flag(upstream_dir))


@shared_root
def pin_baseline_run(
    root: Path,
    seed: int,
    execution: Execution,
    on_state: Callable[[str], None] | None = None,
    upstream: Path | None = None,
    grid: GridPolicy | None = None,
) -> dict[str, Any]:
    """The pinned baseline of ``seed`` on ``grid`` over ``upstream``: the baseline bundle,
    with that grid, is run and pinned the first time; then the pin is returned (a pin
    refuses changes). When this call ran a baseline, ``ran_run_id`` names it: another process
    may have pinned its own first, which the pin then names instead."""
    bundle = baseline_bundle(grid)
    key = candidate_key(root, seed, bundle.grid, upstream)
    existing = discipline.baseline_pointer(root, key)
    if existing:
        pinned = RunRoot(Path(root)).run(existing["run_id"])
        if (packs.scorecard_json(pinned)).is_file():
            return existing
        if (packs.run_json(pinned)).is_file():  # pinned, but interrupted before its scorecard: finish it
            return score_run(root, pinned, pin_as_baseline=True).card["baseline"]
        raise Seg1BError(
            Code.E_CORRUPT_FILE,
            f"the pinned baseline run {existing['run_id']} is missing from the run root",
            file=key.path(root),
        )
    result = run_seed(root=root, seed=seed, policies=bundle, upstream=upstream, execution=execution, on_state=on_state)
    return {**score_run(root, result.run_dir, pin_as_baseline=True).card["baseline"], "ran_run_id": result.run_id}


@dataclass(frozen=True)
class SeedRun:
    result: RunResult
    scored: Scored
    baseline_ran: str | None  # the baseline run this call ran to pin (None: the pin existed, or none was needed)


def run_and_score(
    root: Path,
    seed: int,
    bundle: PolicyBundle,
    execution: Execution,
    on_state: Callable[[str], None] | None = None,
    upstream: Path | None = None,
    *,
    graded: bool,
) -> SeedRun:
    """Every lane's one path for a seed: pin its baseline first when the run is ``graded``
    (its S9 grades the NN tail against it), run the chain, score the run. The first run of
    the baseline bundle itself on a seed, grid and 1A bundle becomes their pin."""
    ratio, ran = None, None
    if graded:
        on_baseline = (lambda name: on_state(f"baseline {name}")) if on_state else None
        pinned = pin_baseline_run(root, seed, execution, on_baseline, upstream, bundle.grid)
        ratio, ran = float(pinned["nn_ratio"]), pinned.get("ran_run_id")
    result = run_seed(root, seed, bundle, upstream, execution, on_state, baseline_nn_ratio=ratio)
    first_baseline = (
        discipline.baseline_pointer(root, candidate_key(root, seed, bundle.grid, upstream)) is None
        and bundle.parameter_hash == baseline_bundle(bundle.grid).parameter_hash
    )
    return SeedRun(result, score_run(root, result.run_dir, pin_as_baseline=first_baseline), ran)
