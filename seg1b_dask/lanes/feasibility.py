"""``seg1b feasibility``: what a bundle's country-level gates will read, and the least
relocation with which any bundle can pass them (DESIGN §12), from 1A's counts and S2's
country mass vector alone: seconds, before any S4–S9 work.

- **Prediction.** S4(a) hits its integer country targets exactly, and they are a function
  of 1A's counts, its merchants' home counts, the S2 vector and the policies: the
  prediction calls S4's own mode (``country_counts`` of ``s4_alloc_plan.modes.MODES``).
  Country metrics follow with the scorer's functions; the southern share uses each
  country's southern fraction of its tile mass, which S4(b) samples from.
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
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from seg1b_dask.core import metrics, share_lp
from seg1b_dask.grading import gates as grading
from seg1b_dask.grading.gates import Level
from seg1b_dask.io.catalogue import pair_counts
from seg1b_dask.io.datasets import COUNTRY_MASS, S3_REQUIREMENTS
from seg1b_dask.io.hashing import canonical_json, sha256_hex
from seg1b_dask.io.lineage import write_json
from seg1b_dask.io.refdata import REGIONS
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.model import mass
from seg1b_dask.policies.bundle import PolicyBundle
from seg1b_dask.policies.gates import GatesPolicy
from seg1b_dask.states.s4_alloc_plan import modes as s4_modes

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
    home_country: NDArray[np.int64]  # per merchant with outlets at home: its home country
    home_sites: NDArray[np.int64]  # ... and its outlets there
    site_south: NDArray[np.float64] | None = None

    @property
    def total(self) -> int:
        return int(self.a_count.sum())

    def home_floor(self, home_min: int) -> NDArray[np.int64]:
        """Per country: the outlets its home merchants keep at least (S4's home floor)."""
        keep = np.minimum(self.home_sites, home_min)
        return np.bincount(self.home_country, weights=keep, minlength=len(self.iso2)).astype(np.int64)


def predicted_counts(inputs: CountryInputs, bundle: PolicyBundle) -> NDArray[np.int64]:
    """The 1B sites per country the bundle's S4(a) will produce (S4's own function)."""
    mode = s4_modes.mode_of(bundle.s4_alloc_plan.country_allocation)
    return mode.country_counts(inputs.a_count, inputs.home_floor, inputs.vector)


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


def least_relocation(inputs: CountryInputs, gates: GatesPolicy, level: Level, margin: float = 0.0) -> LeastRelocation:
    """A lower bound on the total variation from 1A's country shares of any target vector
    meeting the grade's country gates (each tightened by ``margin``). Which countries hold
    outlets is not fixed in advance: the limits (``share_lp``) are a convex relaxation valid
    for every active set of at least K countries, K being the coverage gate's count; top-k
    caps bind the ⌈f K⌉ largest, which the ⌈f m⌉ largest of m ≥ K active countries contain."""
    thresholds = {f: getattr(getattr(gates, f), level) for f in grading.GATE_FIELD.values()}
    eligible = inputs.vector.eligible
    idx = np.flatnonzero(eligible)
    n, total = len(idx), inputs.total
    a = inputs.a_count / total
    moved_out = float(a[~eligible].sum())  # outlets in ineligible countries move anyway
    cover = math.ceil(round((thresholds["eligible_country_nonzero_share_min"] + margin) * n, 9))
    if n == 0 or cover > min(n, total):
        return LeastRelocation(level, False, float("nan"), np.zeros(0), cover, "fewer outlets than countries to cover")
    # Countries without 1A outlets differ only by region and southern fraction: one entry
    # per such pair (``share_lp``'s copies), the same optimum over ~6× fewer Gini pairs.
    first, entry, copies = _interchangeable(a[idx], inputs.vector.region[idx], inputs.vector.south[idx])
    n_entries = len(first)
    limits = share_lp.ShareLimits(
        lower=np.zeros(n_entries),
        upper=np.full(n_entries, np.inf),
        gini_max=thresholds["country_gini_max"] - margin,
        gini_active=cover,
        top_max=tuple(
            (max(1, math.ceil(round(f * cover, 9))), thresholds[f"{name}_share_max"] - margin)
            for name, f in metrics.TOPK_FRACTIONS.items()
        ),
        coverage=(cover, 1.0 / total),
        south=inputs.vector.south[idx][first],
        south_min=thresholds["southern_hemisphere_share_min"] + margin,
        region=inputs.vector.region[idx][first],
        region_min={name: floor + margin for name, floor in gates.region_floor_share.items()},
    )
    found = share_lp.closest_shares(a[idx][first], limits, copies=copies)
    if not found.feasible:
        return LeastRelocation(level, False, float("nan"), np.zeros(0), cover, found.message)
    share = np.zeros(len(a))
    share[idx] = found.share[entry]
    # ½Σ|t−a| over the eligible countries, plus ½ of what sits in ineligible ones
    return LeastRelocation(level, True, found.distance + moved_out / 2.0, share, cover, "optimal")


def _interchangeable(
    a: NDArray[np.float64], region: NDArray[np.str_], south: NDArray[np.float64]
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """Entries of the least-relocation programme: each country with 1A outlets alone, the
    others one per (region, southern fraction). Returns each entry's first country, each
    country's entry and each entry's number of countries."""
    keys = [("", i) if a[i] > 0 else (str(region[i]), float(south[i])) for i in range(len(a))]
    index: dict[tuple[str, float], int] = {}
    entry = np.asarray([index.setdefault(k, len(index)) for k in keys], dtype=np.intp)
    first = np.unique(entry, return_index=True)[1]  # entries are numbered as first met
    return first, entry, np.bincount(entry).astype(np.float64)


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
    """1A's outlets per country and its merchants' home counts (from a verified bundle's
    catalogue) beside S2's table."""
    return inputs_from_pairs(_catalogue_pairs(str(upstream / catalogue)), country_mass)


def inputs_from_pairs(pairs: pa.Table, country_mass: dict[str, list]) -> CountryInputs:
    """The model's inputs from 1A's (merchant, legal country, home country, n_sites) rows."""
    vector = mass.CountryVector.from_columns(country_mass)
    iso2 = np.asarray(country_mass["iso2"], dtype="U2")
    assert (iso2[1:] > iso2[:-1]).all(), "S2's country table is in code order"
    legal = pc.index_in(pairs.column("legal_country_iso"), value_set=pa.array(iso2.tolist())).to_numpy()
    home = pc.index_in(pairs.column("home_country_iso"), value_set=pa.array(iso2.tolist())).to_numpy()
    n_sites = pairs.column("n_sites").to_numpy().astype(np.int64)
    a_count = np.bincount(legal, weights=n_sites, minlength=len(iso2)).astype(np.int64)
    at_home = legal == home
    return CountryInputs(iso2, a_count, vector, home[at_home].astype(np.int64), n_sites[at_home])


@functools.lru_cache(maxsize=16)
def _catalogue_pairs(path: str) -> pa.Table:
    """Outlets per (merchant, legal country, home country) of a 1A catalogue, read once per
    process (a verified 1A bundle is write-once; calibration asks once per trial and seed)."""
    return pair_counts(Path(path))


def relocation_bounds(inputs: CountryInputs, gates: GatesPolicy) -> dict[str, float]:
    """Each grade's least relocation (``least_relocation``; nan where no vector reaches it)."""
    return {level: least_relocation(inputs, gates, level).relocated_share for level in grading.LEVELS}


def price(root: RunRoot, outputs: dict[str, Path], gates: GatesPolicy, relocated_share: float) -> dict[str, Any]:
    """A run's ``relocated_share`` beside each grade's least relocation for its own 1A bundle
    and country table, and their ratio. The bounds are a function of those inputs and the
    gates alone, so they are computed once and kept under the run root's cache."""
    table = COUNTRY_MASS.read(outputs["country_mass"]).to_pydict()
    inputs = inputs_from_pairs(S3_REQUIREMENTS.read(outputs["s3_requirements"]), table)
    key = sha256_hex(
        canonical_json(
            [
                inputs.a_count.tolist(),
                inputs.vector.eligible.tolist(),
                inputs.vector.south.tolist(),
                inputs.vector.region.tolist(),
                gates.model_dump(mode="json"),
            ]
        )
    )
    entry = root.bounds_entry(key)
    if entry.is_file():
        bounds = json.loads(entry.read_text())
    else:
        bounds = relocation_bounds(inputs, gates)
        entry.parent.mkdir(parents=True, exist_ok=True)
        write_json(entry, bounds)
    return {
        "relocated_share": relocated_share,
        "least": bounds,
        "ratio": {level: relocated_share / b if b and b > 0 else float("nan") for level, b in bounds.items()},
    }
