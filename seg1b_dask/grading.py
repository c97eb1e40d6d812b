"""Fail-closed grading against ``gates.yaml`` (DESIGN §6): per seed, across seeds (CV =
population std / mean), and for B+ the bootstrap 95 % upper bound of each concentration
metric. A grade is claimed only if every gate passes on every required seed."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from . import metrics
from .policies import GatesPolicy

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
)
GATE_FIELD = {metric: gate_field for metric, gate_field, _ in METRIC_GATES}
CONCENTRATION = ("country_gini", "top10_share", "top5_share", "top1_share")
# The seed plan's failure triage map (§6), by gate family.
TRIAGE = {
    "concentration": "Gini/top-k: retune S2 caps and concentration penalty first",
    "coverage": "coverage: retune S2 region floors and S4 country allocation",
    "region_floor": "region floor: retune S4 residual redistribution",
    "nn": "NN tail: retune S6 sparse-tail component and clamp",
    "cv": "seed instability: reduce high-sensitivity knobs and tighten deterministic balancing",
    "bootstrap": "concentration too close to the B+ line: retune S2 caps before claiming B+",
    "structural": "structural contract: fix the implementation bug before further realism tuning",
    "missing": "certify every required seed",
}


def _family(metric: str) -> str:
    if metric in CONCENTRATION:
        return "concentration"
    if metric == "nn_contraction":
        return "nn"
    return "coverage"


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


def bootstrap_upper(matrix: NDArray[np.int64], replicates: int, seed: int, quantile: float = 0.95) -> dict[str, float]:
    """One-sided 95 % upper bound of each concentration metric, resampling merchants (the
    unit 1A draws) with replacement: country counts = multinomial merchant weights @ matrix."""
    g = np.random.Generator(np.random.Philox(key=seed))
    n = matrix.shape[0]
    weights = g.multinomial(n, np.full(n, 1.0 / n), size=replicates)
    counts = weights @ matrix
    values: dict[str, list[float]] = {k: [] for k in CONCENTRATION}
    for row in counts:
        values["country_gini"].append(metrics.country_gini(row))
        for name, f in (("top1_share", 0.01), ("top5_share", 0.05), ("top10_share", 0.10)):
            values[name].append(metrics.top_share(row, f)[0])
    return {k: float(np.quantile(v, quantile)) for k, v in values.items()}


def grade(
    cards: dict[int, dict[str, Any]],
    gates: GatesPolicy,
    structural_ok: dict[int, bool],
    bootstrap: dict[int, dict[str, float]] | None = None,
    required_seeds: tuple[int, ...] | None = None,
) -> GradeReport:
    """Grade scorecards keyed by seed. ``bootstrap`` holds per-seed upper bounds (B+ only)."""
    seeds = sorted(cards)
    required = tuple(required_seeds if required_seeds is not None else gates.required_seeds)
    missing = sorted(set(required) - set(seeds))
    failures: dict[str, list[Failure]] = {lvl: [] for lvl in LEVELS}
    for level in LEVELS:
        for seed in seeds:
            m = cards[seed]["metrics"]
            if not structural_ok.get(seed, False):
                failures[level].append(Failure("structural", level, seed, 1.0, 0.0, TRIAGE["structural"]))
            for metric, field_name, direction in METRIC_GATES:
                threshold = getattr(getattr(gates, field_name), level)
                if not _passes(m[metric], threshold, direction):
                    failures[level].append(Failure(metric, level, seed, threshold, m[metric], TRIAGE[_family(metric)]))
            for region, floor in gates.region_floor_share.items():
                share = cards[seed]["region_share"].get(region, 0.0)
                if share < floor:
                    failures[level].append(Failure(f"region_floor:{region}", level, seed, floor, share, TRIAGE["region_floor"]))
            if level == "B_PLUS" and bootstrap is not None:
                for metric in CONCENTRATION:
                    threshold = getattr(gates, GATE_FIELD[metric]).B_PLUS
                    upper = bootstrap[seed][metric]
                    if not upper <= threshold:
                        failures[level].append(Failure(f"bootstrap_upper:{metric}", level, seed, threshold, upper, TRIAGE["bootstrap"]))
        for seed in missing:
            failures[level].append(Failure("required_seed_missing", level, seed, 1.0, 0.0, TRIAGE["missing"]))
    cv: dict[str, float] = {}
    if len(seeds) > 1:
        for metric, _, _ in METRIC_GATES:
            cv[metric] = population_cv([cards[s]["metrics"][metric] for s in seeds])
            for level in LEVELS:
                threshold = getattr(gates.cross_seed_cv_max, level)
                if not _passes(cv[metric], threshold, "max"):
                    failures[level].append(Failure(f"cv:{metric}", level, None, threshold, cv[metric], TRIAGE["cv"]))
    if not failures["B_PLUS"] and bootstrap is not None:
        outcome: Literal["GREEN_BPLUS", "GREEN_B", "RED"] = "GREEN_BPLUS"
    elif not failures["B"]:
        outcome = "GREEN_B"
    else:
        outcome = "RED"
    report = GradeReport(outcome, seeds, missing, failures, cv, bootstrap or {})
    report.next_action = triage(failures["B"] if outcome == "RED" else failures["B_PLUS"])
    return report


TRIAGE_ORDER = ("structural", "missing", "concentration", "coverage", "region_floor", "nn", "cv", "bootstrap")


def _failure_family(gate: str) -> str:
    prefix = gate.split(":")[0]
    if prefix in GATE_FIELD:
        return _family(prefix)
    return {"region_floor": "region_floor", "cv": "cv", "bootstrap_upper": "bootstrap", "required_seed_missing": "missing"}.get(prefix, "structural")


def triage(failures: list[Failure]) -> str:
    """The seed plan's state-first order: structure, concentration, coverage, regions, NN,
    stability — the first family that fails says where to look."""
    families = {_failure_family(f.gate) for f in failures}
    for family in TRIAGE_ORDER:
        if family in families:
            return TRIAGE[family]
    return "none: every gate passes"


def failure_table(report: GradeReport, level: Level) -> list[str]:
    rows = [f"  {'gate':<36} {'seed':>5} {'threshold':>10} {'observed':>10}  triage"]
    for f in report.failures[level]:
        seed = "all" if f.seed is None else str(f.seed)
        rows.append(f"  {f.gate:<36} {seed:>5} {f.threshold:>10.4f} {f.observed:>10.4f}  {f.hint}")
    return rows
