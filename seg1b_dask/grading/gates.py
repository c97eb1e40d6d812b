"""Fail-closed grading against ``gates.yaml`` (DESIGN §6): per seed, across seeds (CV =
population std / mean), and for B+ the bootstrap 95 % upper bound of each concentration
metric. A grade is claimed only if every gate passes on every required seed."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse
from numpy.typing import NDArray

from seg1b_dask.core import metrics
from seg1b_dask.core.text import columns
from seg1b_dask.policies.gates import GatesPolicy

Level = Literal["B", "B_PLUS"]
LEVELS: tuple[Level, ...] = ("B", "B_PLUS")
# (metric, gate field, direction)
METRIC_GATES: tuple[tuple[str, str, str], ...] = (
    ("country_gini", "country_gini_max", "max"),
    ("top10_share", "top10_share_max", "max"),
    ("top5_share", "top5_share_max", "max"),
    ("top1_share", "top1_share_max", "max"),
    ("eligible_country_nonzero_share", "eligible_country_nonzero_share_min", "min"),
    ("southern_hemisphere_share", "southern_hemisphere_share_min", "min"),
    ("nn_contraction", "nn_contraction_min", "min"),
    ("sentinel_flagged", "sentinel_flagged_max", "max"),
    ("merchant_countries_median", "merchant_countries_median_max", "max"),
    ("merchants_above_1a_max_share", "merchants_above_1a_max_share_max", "max"),
    ("near_city_share", "near_city_share_min", "min"),
)
GATE_FIELD = {metric: gate_field for metric, gate_field, _ in METRIC_GATES}
# The seed plan's stability target is a CV limit on its core metrics (§3): concentration,
# coverage, hemisphere and NN tail. The sentinel, footprint and urban gates hold per seed;
# a CV of a count near 0 (flagged countries, a 0.5 % share) measures nothing.
CV_METRICS = (*metrics.COUNTRY_METRICS, "nn_contraction")
CONCENTRATION = ("country_gini", "top10_share", "top5_share", "top1_share")


# The seed plan's failure triage map (§6): what to retune when a gate family fails. The
# families a policy mode owns (concentration, coverage, region floors, footprint, the
# bootstrap, NN, urban) are worded by the mode itself (``advice`` in each state's MODES,
# merged by ``states.triage.triage_hints``); these hold whatever the modes.
TRIAGE: dict[str, str] = {
    "collapse": "collapse: s4_alloc_plan tile_allocation.method/tie_break (systematic/keyed) and max_tile_share",
    "cv": "seed instability: reduce high-sensitivity knobs and tighten deterministic balancing",
    "structural": "structural contract: fix the implementation bug before further realism tuning",
    "missing": "certify every required seed",
    "unsealed": "no valid 1B flag, so nothing vouches for these figures: S9 seals only when the structure and "
    "the target grade's gates pass (s9_validation.yaml), and a bundle changed since is unsealed; run again",
}


def _family(metric: str) -> str:
    if metric in CONCENTRATION:
        return "concentration"
    return {
        "nn_contraction": "nn",
        "sentinel_flagged": "collapse",
        "merchant_countries_median": "footprint",
        "merchants_above_1a_max_share": "footprint",
        "near_city_share": "urban",
    }.get(metric, "coverage")


@dataclass(frozen=True)
class Failure:
    gate: str
    level: Level
    seed: int | None  # None: a cross-seed gate
    threshold: float
    observed: float
    hint: str


@dataclass
class GradeReport:
    outcome: Literal["GREEN_BPLUS", "GREEN_B", "RED"]
    seeds: list[int]
    missing_seeds: list[int]
    failures: dict[str, list[Failure]] = field(default_factory=dict)  # by level
    cv: dict[str, float] = field(default_factory=dict)
    bootstrap_upper: dict[int, dict[str, float]] = field(default_factory=dict)
    next_action: str = ""
    reached_without_missing: str = ""  # what the graded seeds reach, the missing ones aside

    @property
    def uncertified(self) -> bool:
        """Every graded seed reaches a grade, but required seeds are missing: not a certification."""
        return bool(self.missing_seeds) and self.reached_without_missing != "RED"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failures"] = {lvl: [asdict(f) for f in fs] for lvl, fs in self.failures.items()}
        return out


def _passes(value: float, threshold: float, direction: str) -> bool:
    if value is None or math.isnan(value):
        return False  # undefined (e.g. NN ratio with p50 = 0) is a failure, never a pass
    return value <= threshold if direction == "max" else value >= threshold


def population_cv(values: list[float]) -> float:
    """Population std / |mean|. A constant metric is perfectly stable (0); a metric that
    varies around a zero mean is infinitely unstable; an undefined value fails (NaN)."""
    arr = np.asarray(values, dtype=np.float64)
    if np.isnan(arr).any():
        return float("nan")
    std = float(arr.std(ddof=0))
    if std == 0.0:
        return 0.0
    return float("inf") if arr.mean() == 0 else std / abs(float(arr.mean()))


BOOTSTRAP_STREAM_REPLICATES = 125  # replicates per random stream: a block runs anywhere, in any order


def bootstrap_blocks(replicates: int) -> list[tuple[int, int]]:
    """(stream, replicates) of each block of a bootstrap: block ``i`` draws from the Philox
    stream keyed (seed, i), so the blocks can run as separate tasks with the same result."""
    step = BOOTSTRAP_STREAM_REPLICATES
    return [(i, min(step, replicates - first)) for i, first in enumerate(range(0, replicates, step))]


def bootstrap_values(
    matrix: NDArray[np.int64] | scipy.sparse.sparray, seed: int, stream: int, replicates: int
) -> NDArray[np.float64]:
    """Each concentration metric (columns, in ``CONCENTRATION`` order) of ``replicates``
    resamples of the merchants (rows of ``matrix``) with replacement: a replicate draws as
    many merchants as there are, uniformly, and adds up their sites per country. NaN for a
    replicate with no sites."""
    g = np.random.Generator(np.random.Philox(key=np.array([seed, stream], dtype=np.uint64)))
    n = matrix.shape[0]
    sparse_t = scipy.sparse.csr_array(scipy.sparse.csr_array(matrix, dtype=np.float64).T)
    values = np.full((replicates, len(CONCENTRATION)), np.nan)
    for j in range(replicates):
        # Counts of n uniform draws (a multinomial(n, 1/n)) times the matrix: sums of integers,
        # exact in float64 in any order, so one product per replicate equals any batching.
        row = sparse_t @ np.bincount(g.integers(0, n, n), minlength=n).astype(np.float64)
        if row.sum() > 0:
            values[j] = [metrics.concentration(row)[k] for k in CONCENTRATION]
    return values


def bootstrap_bound(
    estimate: dict[str, float], values: NDArray[np.float64], quantile: float = 0.95
) -> dict[str, float]:
    """bound = estimate + (q95 − median of the replicates) + |median − estimate|: the spread
    of the replicates above their own centre (the basic bootstrap's pivot), plus the size of
    the resampling bias whichever way it points. Resampling merchants drops rare countries
    (Gini biased down) and lets noise pick the top countries (top-k biased up); a plain
    percentile bound inherits the bias, and with it the B+ bound of Gini fell below the
    estimate. This bound is never below the estimate."""
    out = {}
    for j, k in enumerate(CONCENTRATION):
        column = np.r_[np.nan, values[:, j]]  # a replicate with no sites is undefined
        upper, centre = np.nanquantile(column, [quantile, 0.5])
        out[k] = float(estimate[k] + (upper - centre) + abs(centre - estimate[k]))
    return out


def bootstrap_estimate(matrix: NDArray[np.int64] | scipy.sparse.sparray) -> dict[str, float]:
    """The concentration metrics of the merchants' sites per country, as they are."""
    return metrics.concentration(np.asarray(scipy.sparse.csr_array(matrix, dtype=np.float64).sum(axis=0)).ravel())


def bootstrap_upper(
    matrix: NDArray[np.int64] | scipy.sparse.sparray, replicates: int, seed: int, quantile: float = 0.95
) -> dict[str, float]:
    """One-sided upper bound of each concentration metric, resampling merchants (the unit 1A
    draws) with replacement (``bootstrap_bound``), every block in this process."""
    values = [bootstrap_values(matrix, seed, stream, k) for stream, k in bootstrap_blocks(replicates)]
    return bootstrap_bound(bootstrap_estimate(matrix), np.concatenate(values), quantile)


def grade(
    cards: dict[int, dict[str, Any]],
    gates: GatesPolicy,
    structural: dict[int, list[str]],
    bootstrap: dict[int, dict[str, float]] | None = None,
    required_seeds: tuple[int, ...] | None = None,
    *,
    hints: dict[str, str],
) -> GradeReport:
    """Grade scorecards keyed by seed. ``structural`` holds each seed's failing structural
    gates from its validation bundle (``verdict.Verdict.failures``; a seed without an entry
    fails ``structural``); ``bootstrap`` its upper bounds (B+ only); ``hints`` the triage
    words by gate family (``states.triage.triage_hints``)."""
    seeds = sorted(cards)
    required = tuple(required_seeds if required_seeds is not None else gates.required_seeds)
    missing = sorted(set(required) - set(seeds))
    failures: dict[str, list[Failure]] = {lvl: [] for lvl in LEVELS}
    for level in LEVELS:
        for seed in seeds:
            for gate in structural.get(seed, ["structural"]):
                failures[level].append(Failure(gate, level, seed, 1.0, 0.0, hints[family_of(gate)]))
            bounds = bootstrap[seed] if bootstrap is not None else None
            for row in gate_table(cards[seed], gates, level, bounds):
                if not row["passed"]:
                    failures[level].append(
                        Failure(
                            row["gate"],
                            level,
                            seed,
                            row["threshold"],
                            row["observed"],
                            hints[family_of(row["gate"])],
                        )
                    )
        for seed in missing:
            failures[level].append(Failure("required_seed_missing", level, seed, 1.0, 0.0, hints["missing"]))
    cv: dict[str, float] = {}
    if len(seeds) > 1:
        for metric in CV_METRICS:
            cv[metric] = population_cv([cards[s]["metrics"][metric] for s in seeds])
            for level in LEVELS:
                threshold = getattr(gates.cross_seed_cv_max, level)
                if not _passes(cv[metric], threshold, "max"):
                    failures[level].append(Failure(f"cv:{metric}", level, None, threshold, cv[metric], hints["cv"]))
    if not failures["B_PLUS"] and bootstrap is not None:
        outcome: Literal["GREEN_BPLUS", "GREEN_B", "RED"] = "GREEN_BPLUS"
    elif not failures["B"]:
        outcome = "GREEN_B"
    else:
        outcome = "RED"
    report = GradeReport(outcome, seeds, missing, failures, cv, bootstrap or {})
    report.next_action = triage(failures["B"] if outcome == "RED" else failures["B_PLUS"], hints)
    present = {lvl: [f for f in fs if f.gate != "required_seed_missing"] for lvl, fs in failures.items()}
    report.reached_without_missing = (
        "GREEN_BPLUS" if not present["B_PLUS"] and bootstrap is not None else ("GREEN_B" if not present["B"] else "RED")
    )
    return report


TRIAGE_ORDER = (
    "structural",
    "missing",
    "concentration",
    "coverage",
    "region_floor",
    "collapse",
    "nn",
    "footprint",
    "urban",
    "cv",
    "bootstrap",
    "unsealed",  # last: a gate that failed is why S9 did not seal, and what to fix
)


def family_of(gate: str) -> str:
    prefix = gate.split(":")[0]
    if prefix in GATE_FIELD:
        return _family(prefix)
    return {
        "region_floor": "region_floor",
        "cv": "cv",
        "bootstrap_upper": "bootstrap",
        "required_seed_missing": "missing",
        "unsealed": "unsealed",
    }.get(prefix, "structural")


# The outcomes that reach each target grade of ``s9_validation.yaml``.
REACHES = {"none": ("GREEN_BPLUS", "GREEN_B", "RED"), "B": ("GREEN_BPLUS", "GREEN_B"), "B_PLUS": ("GREEN_BPLUS",)}


def below_target(outcome: str, target: str) -> bool:
    """Whether a grade falls short of a bundle's target: the certification then fails."""
    return outcome not in REACHES[target]


def triage(failures: list[Failure], hints: dict[str, str]) -> str:
    """The seed plan's state-first order: structure, concentration, coverage, regions, NN,
    stability — the first family that fails says where to look."""
    families = {family_of(f.gate) for f in failures}
    for family in TRIAGE_ORDER:
        if family in families:
            return hints[family]
    return "none: every gate passes"


def failure_table(report: GradeReport, level: Level) -> list[str]:
    """One row per failing gate (seeds listed once, the observed range), its hint below it."""
    by_gate: dict[str, list[Failure]] = {}
    for f in report.failures[level]:
        by_gate.setdefault(f.gate, []).append(f)
    rows, hints = [["gate", "seeds", "threshold", "observed"]], [""]
    for gate, fs in by_gate.items():
        seeds = ",".join("all" if f.seed is None else str(f.seed) for f in fs)
        seen = [f.observed for f in fs]
        observed = f"{min(seen):.4f}" if len(set(seen)) == 1 else f"{min(seen):.4f}–{max(seen):.4f}"
        rows.append([gate, seeds, f"{fs[0].threshold:.4f}", observed])
        hints.append(f"      → {fs[0].hint}")
    lines = columns(rows, [36, 22, 10, 17], "<<>>")  # a longer gate or seed list widens its column
    return [line for row, hint in zip(lines, hints, strict=True) for line in (row, hint) if line]


def gate_table(
    card: dict[str, Any], gates: GatesPolicy, level: Level, bootstrap: dict[str, float] | None
) -> list[dict[str, Any]]:
    """Every per-seed gate of ``level`` with threshold, observed value, margin (positive =
    room to spare) and, when it fails, why."""
    rows: list[dict[str, Any]] = []

    def add(gate: str, observed: float, threshold: float, direction: str) -> None:
        passed = _passes(observed, threshold, direction)
        undefined = observed is None or math.isnan(observed)
        margin = float("nan") if undefined else (threshold - observed if direction == "max" else observed - threshold)
        reason = (
            ""
            if passed
            else (
                "undefined value"
                if undefined
                else f"{observed:.4f} {'>' if direction == 'max' else '<'} {threshold:.4f}"
            )
        )
        rows.append(
            {
                "gate": gate,
                "direction": direction,
                "threshold": threshold,
                "observed": observed,
                "margin": margin,
                "passed": passed,
                "breach": reason,
            }
        )

    m = card["metrics"]
    for metric, field_name, direction in METRIC_GATES:
        add(metric, m[metric], getattr(getattr(gates, field_name), level), direction)
    for region, floor in gates.region_floor_share.items():
        add(f"region_floor:{region}", card["region_share"].get(region, 0.0), floor, "min")
    if level == "B_PLUS" and bootstrap is not None:
        for metric in CONCENTRATION:
            add(f"bootstrap_upper:{metric}", bootstrap[metric], getattr(gates, GATE_FIELD[metric]).B_PLUS, "max")
    return rows
