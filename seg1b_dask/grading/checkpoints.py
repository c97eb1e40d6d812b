"""State checkpoints (seed plan P0.3) and ``seg1b diagnose``: where distortion appears.

Every run writes ``checkpoints/`` into its folder: the country and region profile of 1A's
own counts, of S2's country mass vector, of S4's integer allocation (after re-mass and
integerization) and of the published sites (S8, as S9 scored them), plus S8's
nearest-neighbour tail and local geometry (the collapse sentinel). They are read from the
country- and pair-level datasets and S9's scorecard; no site is read.

``diagnose`` grades each checkpoint with the gates a checkpoint can measure and says, for
every gate the run fails, the first state at which it goes wrong, beside the pinned
baseline's figures at the same states.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seg1b_dask.core import metrics
from seg1b_dask.core.grid import Grid
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.grading import gates as grading
from seg1b_dask.io import packs, refdata
from seg1b_dask.io.datasets import ALLOC_PLAN, COUNTRY_MASS, COUNTRY_PAIRS, S3_REQUIREMENTS
from seg1b_dask.io.lineage import safe_join, write_json, write_text
from seg1b_dask.io.refdata import REGIONS
from seg1b_dask.model import mass
from seg1b_dask.policies.bundle import sealed_bundle
from seg1b_dask.policies.gates import GatesPolicy

STAGES = ("1A", "S2", "S4", "S8")  # chain order; 1A is the input, not a 1B state
CHECKED = ("S2", "S4", "S8")  # the states where a gate can first go wrong
WHAT = {
    "1A": "1A's outlets per country (the input 1B starts from)",
    "S2": "S2's country mass vector (shares the tile weights carry)",
    "S4": "S4's sites per country after re-mass and integerization",
    "S8": "the published sites, as S9 scored them",
}
FOLDER = packs.CHECKPOINTS
COUNTRY_GATES = (*metrics.COUNTRY_METRICS,)
FOOTPRINT_GATES = ("merchant_countries_median", "merchants_above_1a_max_share")
NN_QUANTILES = ("p50", "p75", "p90", "p95", "p99")


@dataclass(frozen=True)
class Profile:
    stage: str
    figures: dict[str, float]  # metrics a gate reads (a stage holds only what it can measure)
    region_share: dict[str, float]
    country_share: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"what": WHAT[self.stage], "metrics": self.figures, "region_share": self.region_share}


def _profile(stage: str, counts: np.ndarray, codes: np.ndarray, region: np.ndarray, eligible: int) -> Profile:
    """Concentration, coverage and region shares of per-country counts (or shares)."""
    total = float(counts.sum())
    active = {str(c): float(n) for c, n in zip(codes, counts, strict=True) if n > 0}
    figures = {k: float(v) for k, v in metrics.country_metrics(active, eligible).items()}
    regions = {r: float(counts[region == r].sum() / total) for r in REGIONS}
    return Profile(stage, figures, regions, {c: n / total for c, n in active.items()})


def _pairs(table: pa.Table, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sites per country (in code order), and the merchant and country code of every pair."""
    country = pc.index_in(table.column("legal_country_iso"), value_set=pa.array(codes.tolist())).to_numpy()
    counts = np.bincount(country, weights=table.column("n_sites").to_numpy(), minlength=len(codes))
    return counts, table.column("merchant_id").to_numpy(), country


def _footprint(merchant: np.ndarray, country: np.ndarray, max_1a: int) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.merchant_footprint(merchant, country, max_1a).items()}


def collect(outputs: dict[str, Path], s4_stats: dict[str, Any], card: dict[str, Any]) -> dict[str, Profile]:
    """The four profiles of one run from its published datasets and S9's scorecard ``card``."""
    table = COUNTRY_MASS.read(outputs["country_mass"]).to_pydict()
    vector = mass.CountryVector.from_columns(table)
    codes = np.asarray(table["iso2"], dtype="U2")
    eligible = int(vector.eligible.sum())

    a_counts, a_merchant, a_country = _pairs(S3_REQUIREMENTS.read(outputs["s3_requirements"]), codes)
    one_a = _profile("1A", a_counts, codes, vector.region, eligible)
    max_1a = metrics.largest_footprint(a_merchant)
    one_a.figures.update(_footprint(a_merchant, a_country, max_1a))

    mass_share = vector.share * vector.eligible
    s2 = _profile("S2", mass_share, codes, vector.region, eligible)
    s2.figures["southern_hemisphere_share"] = float((mass_share * vector.south).sum() / mass_share.sum())

    b_counts, b_merchant, b_country = _pairs(COUNTRY_PAIRS.read(outputs["s4_alloc_plan"]), codes)
    s4 = _profile("S4", b_counts, codes, vector.region, eligible)
    s4.figures["southern_hemisphere_share"] = s4_stats["south_sites"] / float(b_counts.sum())
    s4.figures.update(_footprint(b_merchant, b_country, max_1a))

    m = card["metrics"]
    keep = (*COUNTRY_GATES, *FOOTPRINT_GATES, "near_city_share", "sentinel_flagged", "nn_ratio", "nn_contraction")
    s8 = Profile(
        "S8",
        {k: float(m[k]) for k in keep if k in m} | {f"nn_{q}_km": float(m[f"nn_{q}_km"]) for q in NN_QUANTILES},
        dict(card["region_share"]),
        {c: s for c, _, s in card["country_shares"]},
    )
    return {"1A": one_a, "S2": s2, "S4": s4, "S8": s8}


def write(folder: Path, profiles: dict[str, Profile], card: dict[str, Any]) -> None:
    """``country_profile.csv`` (each country's share at every stage), then
    ``checkpoints.json`` (every profile, S8's NN tail and sentinel)."""
    folder.mkdir(parents=True, exist_ok=True)
    countries = sorted(set().union(*(p.country_share for p in profiles.values())))
    table = refdata.countries()
    region_of = dict(zip(table.iso2.tolist(), table.region.tolist(), strict=True))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["legal_country_iso", "region", *(f"share_{s}" for s in STAGES)])
    for code in countries:
        shares = (f"{profiles[s].country_share.get(code, 0.0):.6f}" for s in STAGES)
        writer.writerow([code, region_of.get(code, ""), *shares])
    write_text(folder / "country_profile.csv", buffer.getvalue())
    payload: dict[str, Any] = {s: profiles[s].as_dict() for s in STAGES}
    payload["S8"]["sentinel"] = card.get("sentinel", {})
    write_json(folder / "checkpoints.json", payload)


def read(run: Path) -> dict[str, Profile] | None:
    """A run's checkpoints, or None for a run written before they existed; a damaged one is
    one coded line naming the file."""
    from seg1b_dask.io.discipline import read_json

    path = run / FOLDER / "checkpoints.json"
    if not path.is_file():
        return None
    payload = read_json(path)
    table = run / FOLDER / "country_profile.csv"
    shares: dict[str, dict[str, float]] = {s: {} for s in STAGES}
    try:
        with open(table, newline="") as fh:
            for row in csv.DictReader(fh):
                for s in STAGES:
                    if (share := float(row[f"share_{s}"])) > 0:
                        shares[s][row["legal_country_iso"]] = share
        return {s: Profile(s, dict(payload[s]["metrics"]), dict(payload[s]["region_share"]), shares[s]) for s in STAGES}
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise Seg1BError(
            Code.E_CORRUPT_FILE, f"a damaged checkpoint ({type(exc).__name__}: {exc})", file=table
        ) from None


def ensure(root: Path, run: Path) -> dict[str, Profile]:
    """A run's checkpoints, written now from its datasets when the run predates them."""
    from seg1b_dask.grading.scoring import read_scorecard
    from seg1b_dask.io.discipline import load_run

    found = read(run)
    if found is not None:
        return found
    meta = load_run(run, needs=("states",))
    outputs = {k: safe_join(root, v) for k, v in meta["outputs"].items()}
    s4 = next(s["stats"] for s in meta["states"] if s["id"] == "S4")
    if "south_sites" not in s4:  # S4 of an older engine: count from its tile plan
        s4 = dict(s4, south_sites=_south_sites(outputs["s4_alloc_plan"], sealed_bundle(meta).grid.resolution_arcsec))
    card = read_scorecard(outputs["validation_bundle"])
    profiles = collect(outputs, s4, card)
    write(run / FOLDER, profiles, card)
    return profiles


def _south_sites(plan: Path, resolution_arcsec: int) -> int:
    grid = Grid(resolution_arcsec)
    tiles = ALLOC_PLAN.read(plan, columns=["tile_id", "n_sites"])
    return int(tiles.column("n_sites").to_numpy()[grid.south(tiles.column("tile_id").to_numpy())].sum())


# -- diagnose -----------------------------------------------------------------------


@dataclass(frozen=True)
class GateTrace:
    """One gate across the chain: the run's value at every stage that measures it, the
    baseline's at the same stages, and the first 1B state at which the run fails it."""

    gate: str
    direction: str
    threshold: float
    run: dict[str, float]
    baseline: dict[str, float]
    passed: dict[str, bool]
    baseline_passed: dict[str, bool]
    first_wrong: str | None  # None: passes at the end
    inherited: bool  # 1A's own counts already fail it
    hint: str

    @property
    def sites_only(self) -> bool:
        """Measured on the published sites only (geometry, urban share, bootstrap bounds):
        "first wrong at S8" then says where it shows, not where it was caused."""
        return set(self.run) == {"S8"}

    @property
    def family(self) -> str:
        return grading.family_of(self.gate)


def stage_gates(profile: Profile, gates: GatesPolicy, level: grading.Level) -> dict[str, dict[str, Any]]:
    """The gate table of one checkpoint: gate -> row (what it cannot measure is NaN)."""
    filled = {m: float("nan") for m, _, _ in grading.METRIC_GATES} | profile.figures
    rows = grading.gate_table({"metrics": filled, "region_share": profile.region_share}, gates, level, None)
    return {r["gate"]: r for r in rows}


def measured(gate: str, stage: str) -> bool:
    """Whether a checkpoint can measure a gate: country shape everywhere (1A has no
    coordinates), footprints once there are merchants per country, the rest on sites."""
    metric = gate.split(":")[0]
    if stage == "S8" or metric == "region_floor":
        return True
    if metric in COUNTRY_GATES:
        return not (stage == "1A" and metric == "southern_hemisphere_share")
    return metric in FOOTPRINT_GATES and stage in ("1A", "S4")


def trace(
    run: dict[str, Profile],
    final: list[dict[str, Any]],
    gates: GatesPolicy,
    level: grading.Level,
    baseline: tuple[dict[str, Profile], list[dict[str, Any]]] | None,
    hints: dict[str, str],
) -> list[GateTrace]:
    """Every gate of ``final`` (the run's own gate table at ``level``) across the stages;
    ``baseline``: the pinned baseline's profiles and its own final gate table."""
    tables = {s: stage_gates(run[s], gates, level) for s in STAGES[:-1]}
    tables["S8"] = {r["gate"]: r for r in final}
    base = None
    if baseline:
        base = {s: stage_gates(baseline[0][s], gates, level) for s in STAGES[:-1]}
        base["S8"] = {r["gate"]: r for r in baseline[1]}
    out = []
    for row in final:
        gate = row["gate"]
        rows = {s: tables[s][gate] for s in STAGES if measured(gate, s) and gate in tables[s]}
        base_rows = {s: base[s][gate] for s in rows if gate in base[s]} if base else {}
        first = None if row["passed"] else next(s for s in CHECKED if s in rows and not rows[s]["passed"])
        out.append(
            GateTrace(
                gate,
                row["direction"],
                row["threshold"],
                {s: r["observed"] for s, r in rows.items()},
                {s: r["observed"] for s, r in base_rows.items()},
                {s: r["passed"] for s, r in rows.items()},
                {s: r["passed"] for s, r in base_rows.items()},
                first,
                "1A" in rows and not rows["1A"]["passed"],
                "" if row["passed"] else hints[grading.family_of(gate)],
            )
        )
    return out


def trace_runs(
    card: dict[str, Any],
    profiles: dict[str, Profile],
    gates: GatesPolicy,
    level: grading.Level,
    hints: dict[str, str],
    base_card: dict[str, Any] | None = None,
    base_profiles: dict[str, Profile] | None = None,
) -> list[GateTrace]:
    """``trace`` from two scorecards and their checkpoints: the run's and its baseline's."""
    final = grading.gate_table(card, gates, level, card.get("bootstrap_upper_95") or None)
    baseline = None
    if base_card is not None and base_profiles is not None:
        base_final = grading.gate_table(base_card, gates, level, base_card.get("bootstrap_upper_95") or None)
        baseline = (base_profiles, base_final)
    return trace(profiles, final, gates, level, baseline, hints)
