"""Pictures a person would rather look at than read: where the sites are, and how the
country shares fall off. Written next to every scorecard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .refdata import REGIONS

REGION_COLOURS = dict(zip(REGIONS, ("#c0392b", "#e67e22", "#2980b9", "#27ae60", "#8e44ad", "#16a085"), strict=True))


def _world(ax, lon: NDArray[np.float64], lat: NDArray[np.float64], region: NDArray[np.str_], title: str) -> None:  # noqa: ANN001
    """Every site on a world map, coloured by macro region."""
    for name, colour in REGION_COLOURS.items():
        sel = region == name
        label = f"{name} ({sel.mean():.1%})"
        ax.scatter(lon[sel], lat[sel], s=0.5, c=colour, linewidths=0, label=label, rasterized=True)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.axhline(0, color="0.7", lw=0.5)
    ax.set_aspect("equal")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8, markerscale=12, frameon=False)


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def site_map(
    lon: NDArray[np.float64],
    lat: NDArray[np.float64],
    region: NDArray[np.str_],
    shares: list[tuple[str, int, float]],
    title: str,
    path: Path,
) -> None:
    """World scatter of every site coloured by macro region, with the top-20 country shares."""
    plt = _pyplot()
    fig, (ax_map, ax_bar) = plt.subplots(1, 2, figsize=(16, 6), gridspec_kw={"width_ratios": [3, 1]})
    _world(ax_map, lon, lat, region, title)
    top = shares[:20][::-1]
    ax_bar.barh([c for c, _, _ in top], [s for _, _, s in top], color="0.35")
    ax_bar.set_xlabel("share of sites")
    ax_bar.set_title("top-20 countries")
    ax_bar.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def site_map_pair(
    candidate: tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.str_], str],
    baseline: tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.str_], str],
    path: Path,
) -> None:
    """The candidate's sites beside its pinned baseline's, one world map each."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(20, 5.6))
    for ax, (lon, lat, region, title) in zip(axes, (baseline, candidate), strict=True):
        _world(ax, lon, lat, region, title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
