"""``seg1b feasibility``: what a bundle's country-level gates will read, and the least
relocation with which any bundle can pass them (DESIGN §12), from 1A's counts and S2's
country mass vector alone: seconds, before any S4–S9 work.

- **Prediction.** S4(a) hits its integer country targets exactly, and they are a function
  of 1A's counts, the S2 vector and the policies (``mass.remass_targets``, the run's own
  arithmetic). Country metrics follow with the scorer's functions; the southern share uses
  each country's southern fraction of its tile mass, which S4(b) samples from.
- **Price of a grade.** A linear programme over target share vectors t: minimise the
  total variation ½ Σ |t − a| from 1A's shares a (the least share of outlets any
  allocation must move) subject to a convex relaxation of the grade's country gates: Gini,
  top-k shares, coverage, the southern share and region floors (``least_relocation``).
  Every target vector that passes them satisfies the relaxation, so the answer is a lower
  bound, and "not reachable at any relocation" is certain.

Gates on geometry (NN, sentinel), merchant footprints, near-city share and the bootstrap
bounds of B+ depend on S4(b)–S8 and are not predicted here, which makes the bound looser,
never wrong.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray
from scipy import sparse
from scipy.optimize import linprog

from . import grading, mass, metrics
from .grading import Level
from .policies import CountryAllocationRemass, GatesPolicy, PolicyBundle, S2BlendV2
from .refdata import REGIONS

# The gates a country-level prediction decides (the rest need sites).
COUNTRY_GATES = (*metrics.COUNTRY_METRICS,)


@dataclass(frozen=True)
class CountryInputs:
    """1A's outlets per country and S2's country table, one row per country in code order.
    ``site_south``: each country's southern share of sites when S4(b) does not sample tiles
    in proportion to their weights (the legacy largest remainder with ``tile_id`` ties puts
    leftover sites on the northernmost tiles); otherwise the tile mass's southern share."""

    iso2: NDArray[np.str_]
    a_count: NDArray[np.int64]
    vector: mass.CountryVector
    site_south: NDArray[np.float64] | None = None

    @property
    def total(self) -> int:
        return int(self.a_count.sum())


def predicted_counts(inputs: CountryInputs, bundle: PolicyBundle) -> NDArray[np.int64]:
    """The 1B sites per country the bundle's S4(a) will produce."""
    mode = bundle.s4_alloc_plan.country_allocation
    if not isinstance(mode, CountryAllocationRemass):
        return inputs.a_count.copy()
    s2 = bundle.s2_tile_weights.tile_weights
    return mass.remass_targets(
        inputs.a_count, inputs.vector, mode, s2.country_mass if isinstance(s2, S2BlendV2) else None
    )


def country_card(counts: NDArray[np.floating[Any] | np.integer[Any]], inputs: CountryInputs) -> dict[str, Any]:
    """The country part of a scorecard for per-country counts (or shares)."""
    share = np.asarray(counts, dtype=np.float64) / float(np.sum(counts))
    active = {str(c): float(n) for c, n in zip(inputs.iso2, counts, strict=True) if n > 0}
    figures: dict[str, Any] = metrics.country_metrics(active, int(inputs.vector.eligible.sum()))
    south = inputs.vector.south if inputs.site_south is None else inputs.site_south
    figures["southern_hemisphere_share"] = float((share * south).sum())
    regions = {r: float(share[inputs.vector.region == r].sum()) for r in REGIONS}
    return {"metrics": figures, "region_share": regions}


def country_gate_rows(card: dict[str, Any], gates: GatesPolicy, level: Level) -> list[dict[str, Any]]:
    """The country-level rows of the grade's gate table, with margins."""
    full = {"metrics": {m: float("nan") for m, _, _ in grading.METRIC_GATES} | card["metrics"]}
    rows = grading.gate_table(full | {"region_share": card["region_share"]}, gates, level, None)
    return [r for r in rows if r["gate"] in COUNTRY_GATES or r["gate"].startswith("region_floor:")]


@dataclass(frozen=True)
class LeastRelocation:
    level: Level
    feasible: bool
    relocated_share: float  # nan when infeasible
    share: NDArray[np.float64]  # the optimal target shares (empty when infeasible)
    countries_to_cover: int  # K: the coverage gate's least number of countries with outlets
    message: str


class _Rows:
    """Sparse inequality rows ``A x ≤ b`` of the programme, block by block."""

    def __init__(self, n_var: int) -> None:
        self.n_var = n_var
        self.r: list[NDArray[np.intp]] = []
        self.c: list[NDArray[np.intp]] = []
        self.v: list[NDArray[np.float64]] = []
        self.b: list[float] = []

    def add(self, rows: NDArray[np.intp], cols: NDArray[np.intp], values: NDArray[np.float64], b: list[float]) -> None:
        self.r.append(np.asarray(rows) + len(self.b))
        self.c.append(np.asarray(cols))
        self.v.append(np.asarray(values, dtype=np.float64))
        self.b.extend(b)

    def matrix(self) -> tuple[sparse.csr_matrix, NDArray[np.float64]]:
        shape = (len(self.b), self.n_var)
        a = sparse.csr_matrix((np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c))), shape=shape)
        return a, np.asarray(self.b)


def least_relocation(inputs: CountryInputs, gates: GatesPolicy, level: Level, margin: float = 0.0) -> LeastRelocation:
    """A lower bound on the total variation from 1A's country shares of any target vector
    meeting the grade's country gates (each tightened by ``margin``), by HiGHS's interior
    point. Which countries hold outlets is not fixed in advance; the programme is a convex
    relaxation valid for every active set of at least K countries (the coverage gate):

    - Gini over the m active countries, G ≤ g, with Σ t = 1: the pairwise sum over all
      eligible countries is Σ_active + (n − m), so Σ_{i<j} |t_i − t_j| ≤ n − K (1 − g);
    - top-k: the k = ⌈f m⌉ largest hold at least the ⌈f K⌉ largest, so T_⌈fK⌉(t) ≤ cap
      (Ogryczak: T_k = min over λ of k λ + Σ (t − λ)⁺);
    - coverage: Σ min(t_c, 1/N) ≥ K / N (concave, so its upper level set is convex);
    - the southern share and region floors are linear.

    Variables on the eligible countries: t; p, q ≥ 0 with t − p + q = a (cost ½ Σ (p+q));
    d_ij ≥ |t_i − t_j|; w ≤ min(t, 1/N); per top-k, λ and u ≥ t − λ."""
    thresholds = {f: getattr(getattr(gates, f), level) for f in grading.GATE_FIELD.values()}
    eligible = inputs.vector.eligible
    idx = np.flatnonzero(eligible)
    n, total = len(idx), inputs.total
    a = inputs.a_count / total
    moved_out = float(a[~eligible].sum())  # outlets in ineligible countries move anyway
    cover = math.ceil(round((thresholds["eligible_country_nonzero_share_min"] + margin) * n, 9))
    if n == 0 or cover > min(n, total):
        return LeastRelocation(level, False, float("nan"), np.zeros(0), cover, "fewer outlets than countries to cover")
    pair_i, pair_j = np.triu_indices(n, k=1)
    n_pairs = len(pair_i)
    ks = {name: max(1, math.ceil(round(f * cover, 9))) for name, f in metrics.TOPK_FRACTIONS.items()}
    o_p, o_q, o_w, o_d = n, 2 * n, 3 * n, 4 * n
    o_k = {name: 4 * n + n_pairs + i * (n + 1) for i, name in enumerate(ks)}
    ub = _Rows(4 * n + n_pairs + len(ks) * (n + 1))
    pairs, rn = np.arange(n_pairs), np.arange(n)
    for sign in (1.0, -1.0):  # ±(t_i − t_j) − d_ij ≤ 0
        ub.add(
            np.r_[pairs, pairs, pairs],
            np.r_[pair_i, pair_j, o_d + pairs],
            np.r_[np.full(n_pairs, sign), np.full(n_pairs, -sign), -np.ones(n_pairs)],
            [0.0] * n_pairs,
        )
    gini = thresholds["country_gini_max"] - margin
    ub.add(np.zeros(n_pairs, np.intp), o_d + pairs, np.ones(n_pairs), [n - cover * (1.0 - gini)])
    for name, k in ks.items():
        lam, u = o_k[name], o_k[name] + 1 + rn
        ub.add(np.r_[rn, rn, rn], np.r_[rn, np.full(n, lam), u], np.r_[np.ones(n), -np.ones(2 * n)], [0.0] * n)
        cap = thresholds[f"{name}_share_max"] - margin
        ub.add(np.zeros(n + 1, np.intp), np.r_[lam, u], np.r_[float(k), np.ones(n)], [cap])
    ub.add(np.r_[rn, rn], np.r_[o_w + rn, rn], np.r_[np.ones(n), -np.ones(n)], [0.0] * n)  # w ≤ t
    ub.add(np.zeros(n, np.intp), o_w + rn, -np.ones(n), [-cover / total])  # Σ w ≥ K / N
    south_min = thresholds["southern_hemisphere_share_min"] + margin
    ub.add(np.zeros(n, np.intp), rn, -inputs.vector.south[idx], [-south_min])
    region = inputs.vector.region[idx]
    for name, floor in gates.region_floor_share.items():
        inside = np.flatnonzero(region == name)
        ub.add(np.zeros(len(inside), np.intp), inside, -np.ones(len(inside)), [-(floor + margin)])
    a_ub, b_ub = ub.matrix()
    a_eq = sparse.csr_matrix(
        (
            np.r_[np.ones(n), -np.ones(n), np.ones(n), np.ones(n)],
            (np.r_[rn, rn, rn, np.full(n, n)], np.r_[rn, o_p + rn, o_q + rn, rn]),
        ),
        shape=(n + 1, ub.n_var),
    )
    cost = np.zeros(ub.n_var)
    cost[o_p:o_w] = 0.5
    bounds = np.zeros((ub.n_var, 2))
    bounds[:, 1] = np.inf
    bounds[o_w : o_w + n, 1] = 1.0 / total  # w ≤ 1/N
    for name in ks:
        bounds[o_k[name]] = (-np.inf, np.inf)
    b_eq = np.r_[a[idx], 1.0]
    result = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs-ipm")
    if result.status != 0:
        return LeastRelocation(level, False, float("nan"), np.zeros(0), cover, str(result.message))
    share = np.zeros(len(a))
    share[idx] = result.x[:n]
    # ½Σ|t−a| over the eligible countries, plus ½ of what sits in ineligible ones
    return LeastRelocation(level, True, float(result.fun) + moved_out / 2.0, share, cover, "optimal")


@dataclass
class Feasibility:
    seed: int | None
    bundle: str
    total: int
    active_1a: int
    eligible: int
    relocated_share: float  # the bundle's own minimum (total variation to its targets)
    card: dict[str, Any]
    rows: dict[Level, list[dict[str, Any]]]
    least: dict[Level, LeastRelocation]
    counts: NDArray[np.int64] = field(repr=False)

    def passes(self, level: Level) -> bool:
        return all(r["passed"] for r in self.rows[level])

    def verdict(self, level: Level) -> str:
        name = level.replace("_PLUS", "+")
        least = self.least[level]
        if not least.feasible:
            return f"{name}: not reachable at any relocation ({least.message})"
        if least.relocated_share <= 1e-9:
            return f"{name}: its country gates allow no relocation at all"
        return (
            f"{name}: not reachable without relocation; reachable only by relocating at least "
            f"{least.relocated_share:.2%} of outlets"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "bundle": self.bundle,
            "outlets": self.total,
            "countries_1a": self.active_1a,
            "eligible_countries": self.eligible,
            "bundle_relocated_share": self.relocated_share,
            "predicted": self.card,
            "gates": {level: rows for level, rows in self.rows.items()},
            "least_relocation": {
                level: {
                    "feasible": lr.feasible,
                    "relocated_share": lr.relocated_share,
                    "countries_to_cover": lr.countries_to_cover,
                    "message": lr.message,
                }
                for level, lr in self.least.items()
            },
            "verdict": [self.verdict(level) for level in grading.LEVELS],
        }


def assess(inputs: CountryInputs, bundle: PolicyBundle, seed: int | None = None) -> Feasibility:
    """The bundle's predicted country gates and each grade's least relocation (pure)."""
    counts = predicted_counts(inputs, bundle)
    card = country_card(counts, inputs)
    tv = int(np.abs(counts - inputs.a_count).sum()) // 2
    return Feasibility(
        seed=seed,
        bundle=bundle.name,
        total=inputs.total,
        active_1a=int((inputs.a_count > 0).sum()),
        eligible=int(inputs.vector.eligible.sum()),
        relocated_share=tv / inputs.total,
        card=card,
        rows={level: country_gate_rows(card, bundle.gates, level) for level in grading.LEVELS},
        least={level: least_relocation(inputs, bundle.gates, level) for level in grading.LEVELS},
        counts=counts,
    )


def read_inputs(upstream: Path, catalogue: str, country_mass: dict[str, list]) -> CountryInputs:
    """1A's outlets per country (from a verified bundle's catalogue) beside S2's table."""
    vector = mass.CountryVector.from_columns(country_mass)
    iso2 = np.asarray(country_mass["iso2"], dtype="U2")
    assert (iso2[1:] > iso2[:-1]).all(), "S2's country table is in code order"
    a_count = np.zeros(len(iso2), dtype=np.int64)
    for code, count in _catalogue_counts(str(upstream / catalogue)).items():
        a_count[int(np.searchsorted(iso2, code))] += count
    return CountryInputs(iso2, a_count, vector)


@functools.lru_cache(maxsize=16)
def _catalogue_counts(path: str) -> dict[str, int]:
    """Outlets per legal country of a 1A catalogue, read once per process (a verified 1A
    bundle is write-once; calibration asks for it once per trial and seed)."""
    counts = pc.value_counts(pq.read_table(path, columns=["legal_country_iso"]).column(0))
    return {entry["values"]: entry["counts"] for entry in counts.to_pylist()}
