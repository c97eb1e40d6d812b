"""knn: the engine's nearest-neighbour distances (scipy cKDTree per latitude band, exact) on
clustered sites (--knn-sites), beside one global cKDTree on 1 core and on all cores and, only
where scikit-learn is importable, its BallTree (haversine) and KDTree; every method's result
compared with the engine's, and the engine's with brute force on a sample of sites."""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from harness import Bench, Measure, measured, medians
from seg1b_dask.core.metrics import EARTH_RADIUS_KM, unit_vectors
from seg1b_dask.engine.execution import Execution, executing
from seg1b_dask.grading.scoring import load_sites
from seg1b_dask.model.nearest import LAT_BINS, ArrayBands, band_arcs, band_edges, nearest_neighbour_km_chunked
from suites.common import scattered, seed42_remediation

TARGETS: dict[str, float] = {}
Floats = NDArray[np.float64]
Method = Callable[[Floats, Floats], Floats]  # lon, lat -> km to the nearest other site (any order)
REFERENCE = "engine_bands_all_cores"
SITES_PER_BAND = 200_000  # the engine's default


def _arc_km(chord: Floats) -> Floats:
    km: Floats = 2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0)) * EARTH_RADIUS_KM
    return km


def _engine(scheduler: str) -> Method:
    def nn(lon: Floats, lat: Floats) -> Floats:
        with executing(Execution(scheduler=scheduler), Path(".")):
            km: Floats = nearest_neighbour_km_chunked(lon, lat, SITES_PER_BAND)
        return km

    return nn


def _ckdtree(workers: int) -> Method:
    def nn(lon: Floats, lat: Floats) -> Floats:
        xyz = unit_vectors(lon, lat)
        chord, _ = cKDTree(xyz).query(xyz, k=2, workers=workers)
        return _arc_km(chord[:, 1])

    return nn


def _balltree_haversine(lon: Floats, lat: Floats) -> Floats:
    from sklearn.neighbors import BallTree

    latlon = np.radians(np.column_stack([lat, lon]))
    arc, _ = BallTree(latlon, metric="haversine").query(latlon, k=2)
    return np.asarray(arc[:, 1] * EARTH_RADIUS_KM)


def _kdtree(lon: Floats, lat: Floats) -> Floats:
    from sklearn.neighbors import KDTree

    xyz = unit_vectors(lon, lat)
    chord, _ = KDTree(xyz).query(xyz, k=2)
    return _arc_km(chord[:, 1])


# name -> (what it is, needs scikit-learn, the method)
METHODS: dict[str, tuple[str, bool, Method]] = {
    "engine_bands_1_core": (
        "the engine: cKDTree per latitude band, Dask synchronous (1 core)",
        False,
        _engine("synchronous"),
    ),
    REFERENCE: ("the engine: cKDTree per latitude band, Dask threads (all cores)", False, _engine("threads")),
    "ckdtree_global_workers_1": ("one scipy cKDTree on 3-D unit vectors, query workers=1", False, _ckdtree(1)),
    "ckdtree_global_workers_all": ("one scipy cKDTree on 3-D unit vectors, query workers=-1", False, _ckdtree(-1)),
    "sklearn_balltree_haversine": ("scikit-learn BallTree, haversine on (lat, lon) radians", True, _balltree_haversine),
    "sklearn_kdtree": ("scikit-learn KDTree on 3-D unit vectors (euclidean chord)", True, _kdtree),
}


def options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--knn-sites", default="1000000,10000000", help="site counts, comma-separated")
    group.add_argument("--knn-methods", default=",".join(METHODS), help="methods to time, comma-separated")
    group.add_argument("--knn-check", type=int, default=100, help="sites checked against brute force")


def _sklearn_version() -> str | None:
    """scikit-learn's version where it can be imported (the comparison is optional)."""
    try:
        import sklearn
    except ImportError:
        return None
    return str(sklearn.__version__)


def _methods(args: argparse.Namespace) -> list[str]:
    names = args.knn_methods.split(",")
    unknown = set(names) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown --knn-methods {sorted(unknown)}: use {', '.join(METHODS)}")
    return [m for m in names if _sklearn_version() or not METHODS[m][1]]


def _sizes(args: argparse.Namespace) -> list[int]:
    return [int(v) for v in args.knn_sites.split(",")]


def steps(args: argparse.Namespace) -> int:
    return 1 + len(_sizes(args)) * (len(_methods(args)) * int(args.repeat) + 1)


def engine_per_site(lon: Floats, lat: Floats) -> tuple[Floats, int]:
    """The engine's distances (km) in site order: ``band_arcs`` on the engine's own bands,
    and the number of bands."""
    histogram, _ = np.histogram(lat, bins=LAT_BINS)
    edges = band_edges(histogram, int(np.ceil(len(lon) / SITES_PER_BAND)))
    read, out = ArrayBands(lon, lat), np.empty(len(lon))
    for i in range(len(edges) - 1):
        lo, hi, last = edges[i], edges[i + 1], i == len(edges) - 2
        out[(lat >= lo) & ((lat <= hi) if last else (lat < hi))] = band_arcs(read, lo, hi, last)
    return out * EARTH_RADIUS_KM, len(edges) - 1


def brute_force_km(lon: Floats, lat: Floats, sample: NDArray[np.int64]) -> Floats:
    """Great-circle distance from each sampled site to its nearest other site, against every
    site (squared chords from coordinate differences, exact to rounding)."""
    xyz = unit_vectors(lon, lat)
    out = np.empty(len(sample))
    for j, i in enumerate(sample):
        d2 = ((xyz - xyz[i]) ** 2).sum(axis=1)
        d2[i] = np.inf
        out[j] = np.sqrt(d2.min())
    return _arc_km(out)


def _rel_diff(a: Floats, b: Floats) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))) if len(a) else 0.0


def _size(bench: Bench, lon: Floats, lat: Floats, methods: list[str]) -> dict[str, Any]:
    n, repeat = len(lon), bench.args.repeat
    times: dict[str, list[Measure]] = {m: [] for m in methods}
    results: dict[str, Floats] = {}
    for r in range(repeat):  # interleaved, so a slow spell of the machine hits every method alike
        for m in methods:
            with bench.progress.step(f"knn: {n:,} sites, {m} ({r + 1}/{repeat})"):
                results[m], measure = measured(functools.partial(METHODS[m][2], lon, lat))
            times[m].append(measure)
    with bench.progress.step(f"knn: {n:,} sites, exactness against brute force"):
        per_site, bands = engine_per_site(lon, lat)
        sample = np.random.default_rng(1).choice(n, size=min(bench.args.knn_check, n), replace=False)
        brute_err = _rel_diff(per_site[sample], brute_force_km(lon, lat, sample))
    engine = np.sort(per_site)
    reference = medians(times[REFERENCE])["seconds_median"] if REFERENCE in times else None
    out: dict[str, Any] = {}
    for m in METHODS:
        if m not in methods:
            out[m] = {"skipped": "scikit-learn is not importable" if METHODS[m][1] else "not in --knn-methods"}
            continue
        got, timing = np.sort(results[m]), medians(times[m])
        out[m] = {
            **timing,
            "ratio_over_engine": round(timing["seconds_median"] / reference, 3) if reference else None,
            "identical_to_engine": bool(np.array_equal(got, engine)),
            "max_rel_diff_vs_engine": _rel_diff(got, engine),
        }
    return {
        "sites": n,
        "bands": bands,
        "sites_per_band": SITES_PER_BAND,
        "nn_km": {f"p{q}": round(float(np.percentile(engine, q)), 5) for q in (50, 90, 99)},
        "brute_force": {"sample": len(sample), "max_rel_err_engine": brute_err},
        "methods": out,
    }


def run(bench: Bench) -> dict[str, Any]:
    methods = _methods(bench.args)
    with bench.progress.step("knn: seed 42, remediation, 31 k sites"):
        sites = load_sites(seed42_remediation(bench.work / "knn").outputs["site_locations"])
    out: dict[str, Any] = {
        "sites_from": (
            f"seed 42's remediation run ({len(sites.lon):,} sites): each site picked uniformly and moved by a "
            "normal 0.02° (about 2 km) in longitude and latitude"
        ),
        "versions": {
            "numpy": np.__version__,
            "scipy": importlib.metadata.version("scipy"),
            "scikit-learn": _sklearn_version(),
        },
        "methods": {m: METHODS[m][0] for m in METHODS},
        "reference": REFERENCE,
        "sizes": {},
    }
    for n in _sizes(bench.args):
        _, lon, lat = scattered(sites.lon, sites.lat, n, np.random.default_rng(0))
        out["sizes"][str(n)] = _size(bench, lon, lat, methods)
        bench.save({"knn": out})
    return {"knn": out}


def summary(fields: dict[str, Any]) -> list[str]:
    lines = []
    for size in fields["knn"]["sizes"].values():
        lines.append(
            f"knn {size['sites']:,} sites, {size['bands']} bands (brute force on {size['brute_force']['sample']}: "
            f"max relative error {size['brute_force']['max_rel_err_engine']:.1e}):"
        )
        for name, m in size["methods"].items():
            if "skipped" in m:
                lines.append(f"  {name:<28} skipped: {m['skipped']}")
                continue
            same = "identical" if m["identical_to_engine"] else f"max rel. diff {m['max_rel_diff_vs_engine']:.1e}"
            lines.append(
                f"  {name:<28} {m['seconds_median']:>8.2f} s (median of {m['runs']})  x{m['ratio_over_engine']} "
                f"of the engine's time  RSS +{m['rss_growth_mb_max']:.0f} MiB  {same}"
            )
    return lines
