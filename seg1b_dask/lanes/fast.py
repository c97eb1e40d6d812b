"""The fast lane (DESIGN §7): one seed from its first dirty state, scored against its pinned
baseline; and ``seg1b feasibility``, which predicts a bundle's country gates before any run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from seg1b_dask.chain.runner import Chain, RunResult, ensure_standin
from seg1b_dask.engine.execution import Execution
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io import discipline, packs
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.io.runroot import RunRoot, shared_root
from seg1b_dask.lanes import feasibility
from seg1b_dask.lanes.score import Scored, run_and_score
from seg1b_dask.plan import closure
from seg1b_dask.policies.bundle import PolicyBundle, load_bundle
from seg1b_dask.report.run_page import run_report
from seg1b_dask.states.s4_alloc_plan import modes as s4_modes


@shared_root
def fast_lane(
    root: Path,
    seed: int,
    policies: Path,
    upstream: Path | None,
    execution: Execution,
    on_state: Callable[[str], None] | None = None,
) -> tuple[RunResult, Scored]:
    """One seed from its first dirty state, scored against the pinned baseline of its seed,
    grid and 1A bundle."""
    bundle = load_bundle(policies, refdata_version())  # loaded once: checked, run and recorded alike
    closure.check_locks(root, bundle.digests)
    graded = bundle.s9_validation.target_grade != "none"  # graded against the pinned baseline: pin it first
    seed_run = run_and_score(root, seed, bundle, execution, on_state, upstream, graded=graded)
    result, scored, ran = seed_run.result, seed_run.scored, seed_run.baseline_ran
    pin = scored.card.get("baseline")
    if pin and ran is not None:  # this command ran a baseline: say whether it is the one pinned
        base_card = packs.scorecard_json(RunRoot(root).run(pin["run_id"]))
        grade = discipline.read_json(base_card).get("grade_single_seed", {}) if base_card.is_file() else {}
        scored.card["baseline_pinned_now"] = {"run_id": pin["run_id"], "grade": grade.get("outcome"), "ran": ran}
    discipline.set_pointer(
        root,
        "current_candidate",
        {"run_id": result.run_id, "seed": seed, "parameter_hash": result.tokens.parameter_hash},
    )
    run_report(root, result.run_dir)
    return result, scored


@shared_root
def feasibility_of(
    root: Path, seed: int, policies: Path | PolicyBundle, upstream: Path | None, execution: Execution
) -> feasibility.Feasibility:
    """Predict a bundle's country gates for a seed, and each grade's least relocation, from
    the verified 1A bundle and S2's country mass vector (S1/S2 from the cache or built once)."""
    from seg1b_dask.chain.runner import code_digest
    from seg1b_dask.states import s0_gate

    run_root = RunRoot(root)
    bundle = policies if isinstance(policies, PolicyBundle) else load_bundle(policies, refdata_version())
    upstream_dir = Path(upstream) if upstream else ensure_standin(run_root, seed)
    s0_gate.verify(upstream_dir, seed, bundle.parameter_hash, code_digest())
    chain = Chain(run_root, seed, bundle, upstream_dir, execution)
    chain.run_global()
    return feasibility.assess(country_inputs(chain, upstream_dir, seed), bundle, seed)


def country_inputs(chain: Chain, upstream_dir: Path, seed: int) -> feasibility.CountryInputs:
    """The feasibility model's inputs for ``seed``'s 1A bundle beside a chain whose S1/S2
    are published (seed-free, so one chain serves every seed): 1A's counts, S2's country
    table and, where S4(b) does not follow the weights, each country's southern share
    under its own allocation."""
    from seg1b_dask.io.datasets import COUNTRY_MASS
    from seg1b_dask.io.upstream import CATALOGUE

    bundle = chain.bundle
    table = COUNTRY_MASS.read(chain.published["country_mass"]).to_pydict()
    inputs = feasibility.read_inputs(upstream_dir, CATALOGUE, table)
    if bundle.s4_alloc_plan.tile_allocation.method != "systematic":
        if s4_modes.mode_of(bundle.s4_alloc_plan.country_allocation).relocates:
            raise Seg1BError(
                Code.E_POLICY_INVALID,
                "feasibility predicts a re-mass only with systematic tile sampling",
                key="tile_allocation.method",
            )
        inputs = replace(inputs, site_south=_allocated_south(upstream_dir / CATALOGUE, chain, bundle, seed, table))
    return inputs


def _allocated_south(catalogue: Path, chain: Chain, bundle: PolicyBundle, seed: int, table: dict) -> np.ndarray:
    """Each country's southern share of sites under S4(b)'s own allocation of 1A's pairs
    (the legacy posture keeps 1A's pairs): tiles never straddle the equator."""
    from seg1b_dask.io.catalogue import pair_counts
    from seg1b_dask.io.grids import TILE_GRID
    from seg1b_dask.states.s4_alloc_plan import allocate_country_tiles

    pairs = (
        pair_counts(catalogue)  # one row per (merchant, legal country): a merchant has one home
        .select(["legal_country_iso", "merchant_id", "n_sites"])
        .sort_by([("legal_country_iso", "ascending"), ("merchant_id", "ascending")])
    )
    south = np.zeros(len(table["iso2"]))
    grid = chain.grid
    codes = np.asarray(pairs["legal_country_iso"].to_pylist(), dtype="U2")  # sorted: one slice per country
    for i, iso2 in enumerate(table["iso2"]):
        lo, hi = np.searchsorted(codes, iso2), np.searchsorted(codes, iso2, side="right")
        if lo == hi or not table["eligible"][i]:
            continue
        rows = pairs.slice(lo, hi - lo)
        tiles, weight = TILE_GRID.country_cells(
            chain.published["tile_grid"], chain.published["tile_weights"], table["country_id"][i]
        )
        plan, _ = allocate_country_tiles(rows, tiles, weight, iso2, bundle.s4_alloc_plan.tile_allocation, seed, grid)
        n = plan["n_sites"].to_numpy()
        south[i] = float(n[grid.south(plan["tile_id"].to_numpy())].sum() / n.sum())
    return south
