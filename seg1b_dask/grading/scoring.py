"""The realism scorecard of one run (DESIGN §6), computed from every part file of its
``site_locations`` (``verdict`` says whether a 1B flag vouches for them)."""

from __future__ import annotations

import csv
import functools
import io
import json
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse
from numpy.typing import NDArray
from scipy.spatial import cKDTree
from scipy.stats import spearmanr

from seg1b_dask.core import metrics, rng
from seg1b_dask.io import packs, refdata
from seg1b_dask.io.catalogue import iso_codes
from seg1b_dask.io.datasets import SITE_LOCATIONS
from seg1b_dask.io.lineage import write_json, write_text
from seg1b_dask.io.refdata import REGIONS
from seg1b_dask.model import sentinel
from seg1b_dask.model.nearest import LAT_BINS, nearest_neighbour_km_chunked
from seg1b_dask.policies.gates import GatesPolicy, Plausibility


@dataclass(frozen=True)
class SiteFrame:
    merchant_id: NDArray[np.uint64]
    iso2: NDArray[np.str_]
    lon: NDArray[np.float64]
    lat: NDArray[np.float64]

    @classmethod
    def from_table(cls, table: pa.Table) -> SiteFrame:
        return cls(
            table.column("merchant_id").to_numpy(),
            iso_codes(table.column("legal_country_iso")),
            table.column("lon_deg").to_numpy(),
            table.column("lat_deg").to_numpy(),
        )


@functools.lru_cache(maxsize=4)
def _place_tree(min_population: int) -> cKDTree | None:
    """The vendored places of at least ``min_population`` people, as a tree of unit vectors:
    built once per process, not once per batch and figure."""
    places = refdata.places().at_least(min_population)
    return cKDTree(metrics.unit_vectors(places.lon, places.lat)) if len(places.lon) else None


def near_places(vectors: NDArray[np.float64], km: float, min_population: int) -> NDArray[np.bool_]:
    """Which sites (unit ``vectors``) lie within ``km`` (great circle) of a vendored place of
    at least ``min_population`` people."""
    places = _place_tree(min_population)
    if places is None or len(vectors) == 0:
        return np.zeros(len(vectors), dtype=bool)
    # Only "is a place within km" matters: search no farther than that chord (plus slack).
    reach = 2.0 * np.sin(min(km / metrics.EARTH_RADIUS_KM, np.pi) / 2.0) * (1 + 1e-9) + 1e-12
    chord, _ = places.query(vectors, k=1, distance_upper_bound=reach)
    arc_km = 2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0)) * metrics.EARTH_RADIUS_KM
    return np.isfinite(chord) & (arc_km <= km)


def near_city_and_rural(vectors: NDArray[np.float64], gates: GatesPolicy) -> tuple[int, int]:
    """Sites near a city (the gate) and rural sites (plausibility: near no town). Where every
    city is a town and the town radius is no shorter, a site near a city is near a town, so
    only the other sites are searched for towns."""
    near_city = near_places(vectors, gates.near_city_km, gates.near_city_min_population)
    towns = gates.plausibility
    nested = towns.rural_km >= gates.near_city_km and towns.rural_min_population <= gates.near_city_min_population
    searched = vectors[~near_city] if nested else vectors
    rural = int((~near_places(searched, towns.rural_km, towns.rural_min_population)).sum())
    return int(near_city.sum()), rural


@dataclass
class SiteFigures:
    """What a set of whole countries' sites adds to the scorecard: sums, per-country
    figures and the (merchant, country) pair counts, never one value per site. Parts of
    disjoint countries merge exactly."""

    sites: int
    south: int
    near_city: int
    rural: int
    country_counts: dict[str, int]
    pair_merchant: NDArray[np.uint64]
    pair_country: NDArray[np.str_]
    pair_sites: NDArray[np.int64]
    sentinels: dict[str, dict[str, float]]
    lat_histogram: NDArray[np.int64]

    @classmethod
    def merge(cls, parts: list[SiteFigures]) -> SiteFigures:
        return cls(
            sum(p.sites for p in parts),
            sum(p.south for p in parts),
            sum(p.near_city for p in parts),
            sum(p.rural for p in parts),
            {c: n for p in parts for c, n in p.country_counts.items()},
            np.concatenate([p.pair_merchant for p in parts]) if parts else np.zeros(0, np.uint64),
            np.concatenate([p.pair_country for p in parts]) if parts else np.zeros(0, "U2"),
            np.concatenate([p.pair_sites for p in parts]) if parts else np.zeros(0, np.int64),
            {c: v for p in parts for c, v in p.sentinels.items()},
            np.sum([p.lat_histogram for p in parts], axis=0) if parts else np.zeros(len(LAT_BINS) - 1, np.int64),
        )


def site_figures(
    sites: SiteFrame,
    gates: GatesPolicy,
    watched: Collection[str],
    reference: Callable[[str], sentinel.CountryReference],
) -> SiteFigures:
    """The scorecard's share of ``sites``, which must hold every site of its countries;
    the collapse sentinel of those in ``watched`` (``sentinel.watched`` of every country's
    count), each against ``reference(country)``."""
    country = rng.country_code_int(sites.iso2)
    per_code = np.bincount(country.astype(np.int64), minlength=1 << 16)  # two ASCII bytes: 16 bits
    present = np.flatnonzero(per_code)
    codes, counts = rng.country_code_str(present), per_code[present]
    merchant = sites.merchant_id.astype(np.uint64)
    order = np.lexsort((country, merchant))  # pairs in (merchant, country) order
    m, c = merchant[order], country[order]
    first = np.flatnonzero(np.r_[True, (m[1:] != m[:-1]) | (c[1:] != c[:-1])]) if len(m) else np.zeros(0, np.int64)
    pair_n = np.diff(np.r_[first, len(m)])
    sentinels = {}
    for code in sorted(set(watched) & set(codes.tolist())):
        sel = country == rng.country_code_int(np.asarray([code]))[0]
        sentinels[code] = sentinel.measure(sites.lon[sel], sites.lat[sel], reference(code))
    histogram, _ = np.histogram(sites.lat, bins=LAT_BINS)
    near_city, rural = near_city_and_rural(metrics.unit_vectors(sites.lon, sites.lat), gates)
    return SiteFigures(
        sites=len(sites.lat),
        south=int((sites.lat < 0).sum()),
        near_city=near_city,
        rural=rural,
        country_counts=dict(zip(codes.tolist(), counts.tolist(), strict=True)),
        pair_merchant=m[first],
        pair_country=rng.country_code_str(c[first]),
        pair_sites=pair_n.astype(np.int64),
        sentinels=sentinels,
        lat_histogram=histogram.astype(np.int64),
    )


def assemble_scorecard(
    figures_in: SiteFigures,
    nn: metrics.NNSummary,
    region_of: dict[str, str],
    eligible_count: int,
    baseline_nn_ratio: float | None,
    max_1a_countries: int,
    plausible: Plausibility,
) -> dict[str, Any]:
    """Every metric of DESIGN §6 for one seed, plus merchant footprint (against the graded 1A
    bundle's own largest footprint, ``max_1a_countries``), urban proximity and the
    plausibility figures."""
    f = figures_in
    figures: dict[str, Any] = metrics.country_metrics(f.country_counts, eligible_count)
    figures["sites"] = f.sites
    figures["southern_hemisphere_share"] = f.south / f.sites if f.sites else float("nan")
    regions = {r: 0.0 for r in REGIONS}
    for code, n in f.country_counts.items():
        regions[region_of[code]] += n / f.sites
    shares = sorted(((c, n, n / f.sites) for c, n in f.country_counts.items()), key=lambda t: (-t[1], t[0]))
    figures.update(metrics.merchant_footprint(f.pair_merchant, rng.country_code_int(f.pair_country), max_1a_countries))
    figures["merchant_countries_max_1a"] = max_1a_countries
    figures["near_city_share"] = f.near_city / f.sites if f.sites else 0.0
    figures.update(metrics.nn_metrics(nn))
    figures["nn_histogram"] = metrics.nn_histogram(nn)
    set_baseline(figures, baseline_nn_ratio)
    sentinels = {c: f.sentinels[c] for c in sentinel.watched(f.country_counts)}
    figures["sentinel_flagged"] = sum(s["flagged"] for s in sentinels.values())
    return {
        "metrics": figures,
        "region_share": regions,
        "country_shares": shares,
        "sentinel": sentinels,
        "plausibility": plausibility(f, plausible),
    }


def plausibility(f: SiteFigures, settings: Plausibility) -> dict[str, Any]:
    """Beside the gates, never graded: do countries' shares rank with their people (Spearman
    over the countries with sites), which country is served most per person (its share ÷ its
    share of the people of the countries with sites), how much goes to countries of fewer
    than ``small_country_population`` people, and the rural share."""
    table = refdata.countries()
    people = dict(zip(table.iso2.tolist(), table.population.tolist(), strict=True))
    codes = sorted(f.country_counts)
    counts = np.asarray([f.country_counts[c] for c in codes], dtype=np.float64)
    population = np.asarray([people.get(c, 0) for c in codes], dtype=np.float64)
    share = counts / max(counts.sum(), 1.0)
    per_capita = np.divide(
        share, population / max(population.sum(), 1.0), out=np.full(len(codes), np.inf), where=population > 0
    )
    worst = int(np.argmax(per_capita)) if len(codes) else 0
    rho = float(spearmanr(share, population).statistic) if len(codes) > 2 else float("nan")
    return {
        "population_rank_correlation": rho,
        "countries": len(codes),
        "max_per_capita_ratio": float(per_capita[worst]) if len(codes) else float("nan"),
        "max_per_capita_country": codes[worst] if len(codes) else "",
        "small_country_share": float(share[population < settings.small_country_population].sum()),
        "small_country_population": settings.small_country_population,
        "rural_share": f.rural / f.sites if f.sites else float("nan"),
        "rural_km": settings.rural_km,
        "rural_min_population": settings.rural_min_population,
    }


def compute_scorecard(
    sites: SiteFrame,
    region_of: dict[str, str],
    eligible_count: int,
    baseline_nn_ratio: float | None,
    gates: GatesPolicy,
    reference: Callable[[str], sentinel.CountryReference],
    max_1a_countries: int,
) -> dict[str, Any]:
    """The scorecard of sites held in memory (S9 computes the same per country batch);
    ``reference`` as for ``site_figures`` (e.g. ``sentinel.grid_reference`` on the run's tile
    grid)."""
    codes, counts = np.unique(sites.iso2, return_counts=True)
    watched = sentinel.watched(dict(zip(codes.tolist(), counts.tolist(), strict=True)))
    figures = site_figures(sites, gates, watched, reference)
    nn = metrics.NNSummary.of(nearest_neighbour_km_chunked(sites.lon, sites.lat))
    return assemble_scorecard(
        figures, nn, region_of, eligible_count, baseline_nn_ratio, max_1a_countries, gates.plausibility
    )


def set_baseline(figures: dict[str, Any], baseline_nn_ratio: float | None) -> None:
    """``nn_contraction`` = (baseline ratio − ratio) / baseline ratio; undefined without a
    baseline or a ratio (which fails its gate)."""
    ratio = figures["nn_ratio"]
    figures["baseline_nn_ratio"] = baseline_nn_ratio if baseline_nn_ratio is not None else float("nan")
    figures["nn_contraction"] = (
        (baseline_nn_ratio - ratio) / baseline_nn_ratio if baseline_nn_ratio and not math.isnan(ratio) else float("nan")
    )


def merchant_country_matrix(
    merchant: NDArray[np.uint64], iso2: NDArray[np.str_], n_sites: NDArray[np.int64]
) -> tuple[scipy.sparse.csr_array, list[str]]:
    """Sites per (merchant, country): the unit the bootstrap resamples. Rows in merchant
    order, columns in code order."""
    _, m_idx = np.unique(merchant, return_inverse=True)
    codes, c_idx = np.unique(rng.country_code_int(iso2), return_inverse=True)  # code order = name order
    mat = scipy.sparse.coo_array(
        (np.asarray(n_sites, dtype=np.int64), (m_idx, c_idx)), shape=(m_idx.max() + 1, len(codes))
    ).tocsr()  # duplicates summed; one row per merchant, never a dense merchants × countries block
    return mat, rng.country_code_str(codes).tolist()


def egress_pairs(egress: Path) -> tuple[NDArray[np.uint64], NDArray[np.str_], NDArray[np.int64]]:
    """Sites per (merchant, country) of a ``site_locations``, read one country at a time."""
    merchant, iso2, n = [], [], []
    for code in SITE_LOCATIONS.countries(egress):
        ids, counts = np.unique(
            SITE_LOCATIONS.read(egress, [code], ["merchant_id"]).column(0).to_numpy(), return_counts=True
        )
        merchant.append(ids)
        iso2.append(np.full(len(ids), code, dtype="U2"))
        n.append(counts)
    if not merchant:
        return np.zeros(0, np.uint64), np.zeros(0, "U2"), np.zeros(0, np.int64)
    return np.concatenate(merchant), np.concatenate(iso2), np.concatenate(n).astype(np.int64)


def _write_csv(path: Path, header: list[str], rows: list[tuple[Any, ...]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def write_scorecard(card: dict[str, Any], folder: Path) -> None:
    """Every file atomically, ``scorecard.json`` last: once it is there, the rest is too."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(
        folder / packs.COUNTRY_SHARES_CSV,
        ["legal_country_iso", "sites", "share"],
        [(c, n, f"{s:.6f}") for c, n, s in card["country_shares"]],
    )
    _write_csv(
        folder / packs.REGION_SHARES_CSV,
        ["region", "share"],
        [(r, f"{s:.6f}") for r, s in card["region_share"].items()],
    )
    m = card["metrics"]
    _write_csv(
        folder / packs.NN_QUANTILES_CSV,
        ["quantile", "km"],
        [(q, f"{m[f'nn_{q}_km']:.6f}") for q in ("p50", "p75", "p90", "p95", "p99")],
    )
    _write_csv(
        folder / packs.SENTINEL_CSV,
        ["legal_country_iso", *sentinel.FIGURES],
        [
            (c, *(f"{s[k]:.{digits}f}" if digits else s[k] for k, digits in sentinel.FIGURES.items()))
            for c, s in card["sentinel"].items()
        ],
    )
    write_json(folder / packs.SCORECARD_JSON, {k: v for k, v in card.items() if k != "country_shares"})


def read_scorecard(folder: Path) -> dict[str, Any]:
    """The inverse of ``write_scorecard``: JSON figures plus the country counts (shares are
    recomputed exactly from the counts)."""
    card = json.loads((folder / packs.SCORECARD_JSON).read_text())
    with open(folder / packs.COUNTRY_SHARES_CSV, newline="") as fh:
        rows = [(r["legal_country_iso"], int(r["sites"])) for r in csv.DictReader(fh)]
    total = sum(n for _, n in rows)
    card["country_shares"] = [(c, n, n / total) for c, n in rows]
    return card


def load_sites(egress: Path) -> SiteFrame:
    """Every site of a ``site_locations`` in memory (benchmarks and tests; S9 never does this)."""
    return SiteFrame.from_table(
        SITE_LOCATIONS.read(egress, columns=["merchant_id", "legal_country_iso", "lon_deg", "lat_deg"])
    )
