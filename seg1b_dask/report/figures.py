"""The report's figures, each one inline PNG: the site map (aggregated with datashader, so
millions of points cost one raster, with the vendored country outlines), choropleths,
Lorenz curves, the nearest-neighbour distribution, state checkpoints and region shares."""

from __future__ import annotations

import base64
import io
from functools import cache
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray

from seg1b_dask.core import metrics
from seg1b_dask.grading import checkpoints
from seg1b_dask.grading import gates as grading
from seg1b_dask.io import refdata
from seg1b_dask.io.refdata import REGIONS

MAP_SIZE = (1440, 720)

OUTLINE_TOLERANCE_DEG = 0.05


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@cache
def _outlines() -> tuple[list[NDArray[np.float64]], list[list[NDArray[np.float64]]]]:
    """Simplified country rings, for outlines (all rings) and fills (exteriors per country)."""
    geoms = shapely.simplify(refdata.countries().geometry, OUTLINE_TOLERANCE_DEG, preserve_topology=True)
    rings: list[NDArray[np.float64]] = []
    exteriors: list[list[NDArray[np.float64]]] = []
    for geom in geoms:
        parts = shapely.get_parts(geom)
        rings += [shapely.get_coordinates(r) for r in shapely.get_rings(parts)]
        exteriors.append([shapely.get_coordinates(shapely.get_exterior_ring(p)) for p in parts])
    return rings, exteriors


def density_counts(lon: NDArray[np.float64], lat: NDArray[np.float64]) -> NDArray[np.float64]:
    """Sites per pixel of the world canvas (datashader): counts of batches add up exactly, so
    a run's map is drawn one part file at a time."""
    import datashader as ds
    import pandas as pd

    canvas = ds.Canvas(plot_width=MAP_SIZE[0], plot_height=MAP_SIZE[1], x_range=(-180, 180), y_range=(-90, 90))
    return np.asarray(canvas.points(pd.DataFrame({"lon": lon, "lat": lat}), "lon", "lat").values, dtype=np.float64)


def density_raster(counts: NDArray[np.float64]) -> NDArray[np.float64]:
    """Sites per pixel spread by one pixel and shaded on a log scale: RGBA rows from the
    south, transparent where there are no sites."""
    from matplotlib import colormaps
    from scipy.ndimage import maximum_filter

    counts = maximum_filter(counts, size=3)
    level = np.log1p(counts) / max(float(np.log1p(counts.max())), 1.0)
    rgba = colormaps["YlOrRd"](0.35 + 0.65 * level)
    rgba[..., 3] = np.where(counts > 0, 1.0, 0.0)
    return rgba


def _world_axes(ax: Any, title: str) -> None:
    from matplotlib.collections import LineCollection

    rings, _ = _outlines()
    ax.add_collection(LineCollection(rings, colors="0.55", linewidths=0.3))
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def map_figure(panels: list[tuple[str, NDArray[np.float64]]]) -> str:
    """One world map per (title, ``density_counts``)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(8.5 * len(panels), 4.6), squeeze=False)
    for ax, (title, counts) in zip(axes[0], panels, strict=True):
        ax.imshow(
            density_raster(counts), extent=(-180, 180, -90, 90), origin="lower", interpolation="nearest", zorder=2
        )
        _world_axes(ax, title)
    fig.tight_layout()
    return _png(fig)


def choropleth_figure(panels: list[tuple[str, dict[str, float]]]) -> str:
    from matplotlib import colors
    from matplotlib.collections import PolyCollection

    plt = _pyplot()
    _, exteriors = _outlines()
    codes = refdata.countries().iso2.tolist()
    top = max(max(s.values(), default=0.0) for _, s in panels) or 1.0
    norm = colors.LogNorm(vmin=1e-4, vmax=max(top, 1e-3))
    fig, axes = plt.subplots(1, len(panels), figsize=(8.5 * len(panels), 4.6), squeeze=False)
    for ax, (title, shares) in zip(axes[0], panels, strict=True):
        polys, values = [], []
        for code, rings in zip(codes, exteriors, strict=True):
            polys += rings
            values += [shares.get(code, 0.0)] * len(rings)
        shade = np.asarray(values)
        facecolors = plt.get_cmap("viridis")(norm(np.maximum(shade, 1e-4)))
        facecolors[shade == 0] = (0.9, 0.9, 0.9, 1.0)
        ax.add_collection(PolyCollection(polys, facecolors=facecolors, edgecolors="0.4", linewidths=0.2))
        _world_axes(ax, title)
    fig.colorbar(
        plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=axes[0].tolist(), shrink=0.7, label="share of sites"
    )
    return _png(fig)


def lorenz_figure(curves: list[tuple[str, list[int]]]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, label="equality")
    for label, counts in curves:
        x = np.sort(np.asarray(counts, dtype=np.float64))
        y = np.r_[0.0, np.cumsum(x) / x.sum()]
        ax.plot(np.linspace(0, 1, len(y)), y, label=f"{label} (Gini {metrics.country_gini(x):.3f})")
    ax.set_xlabel("share of active countries (ascending)")
    ax.set_ylabel("share of sites")
    ax.legend(fontsize=8)
    ax.set_title("Lorenz curve of country counts", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def nn_figure(curves: list[tuple[str, dict[str, Any]]]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    lo, hi = np.inf, 0.0
    for i, ((label, m), colour) in enumerate(zip(curves, ("#1b9e77", "#d95f02"), strict=False)):
        hist = m["nn_histogram"]
        edges, counts = np.asarray(hist["edges_km"]), np.asarray(hist["counts"])
        used = np.flatnonzero(counts)
        if len(used):
            lo, hi = min(lo, edges[used[0]]), max(hi, edges[used[-1] + 1])
        ax.stairs(counts / max(m["sites"], 1), edges, label=label, color=colour)
        for q, style in (("nn_p50_km", "--"), ("nn_p99_km", ":")):
            ax.axvline(m[q], color=colour, ls=style, lw=0.9)
            label_y = 0.55 + 0.2 * i
            ax.annotate(
                f"{q[3:6]} {m[q]:.2f} km", (m[q], label_y), xycoords=("data", "axes fraction"), fontsize=7, color=colour
            )
    ax.set_xscale("log")
    if hi > 0:
        ax.set_xlim(lo / 2, hi * 2)
    ax.set_xlabel("distance to the nearest other site (km, log)")
    ax.set_ylabel("share of sites per bin")
    ax.set_title("nearest-neighbour distances (p50 dashed, p99 dotted)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _png(fig)


STAGE_METRICS = ("country_gini", "top1_share", "eligible_country_nonzero_share", "southern_hemisphere_share")


def checkpoint_figure(panels: list[tuple[str, dict[str, checkpoints.Profile]]], gates: Any) -> str:
    """The country metrics a gate reads, at each state of the chain, with the B (solid) and
    B+ (dashed) limits: where a run's shape first goes wrong."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(STAGE_METRICS), figsize=(13.0, 3.4))
    x = np.arange(len(checkpoints.STAGES))
    for ax, metric in zip(axes, STAGE_METRICS, strict=True):
        for label, profiles in panels:
            y = [profiles[s].figures.get(metric, np.nan) for s in checkpoints.STAGES]
            ax.plot(x, y, marker="o", label=label)
        limits = getattr(gates, grading.GATE_FIELD[metric])
        ax.axhline(limits.B, color="0.4", lw=0.9)
        ax.axhline(limits.B_PLUS, color="0.4", lw=0.9, ls="--")
        ax.set_xticks(x, list(checkpoints.STAGES), fontsize=8)
        ax.set_title(metric, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def regions_figure(panels: list[tuple[str, dict[str, float]]], floors: dict[str, float]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    x = np.arange(len(REGIONS))
    width = 0.8 / len(panels)
    for i, (label, shares) in enumerate(panels):
        ax.bar(x + i * width - 0.4 + width / 2, [shares.get(r, 0.0) for r in REGIONS], width, label=label)
    ax.scatter(x, [floors.get(r, 0.0) for r in REGIONS], marker="_", s=600, color="k", zorder=3, label="floor")
    ax.set_xticks(x, [r.replace(" ", "\n") for r in REGIONS], fontsize=8)
    ax.set_ylabel("share of sites")
    ax.set_title("region shares against their floors", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
