"""Pictures a person would rather look at than read: where the sites are, and how the
country shares fall off. Written next to every scorecard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .refdata import REGIONS

REGION_COLOURS = dict(zip(REGIONS, ("#c0392b", "#e67e22", "#2980b9", "#27ae60", "#8e44ad", "#16a085"), strict=True))


def site_map(
    lon: NDArray[np.float64],
    lat: NDArray[np.float64],
    region: NDArray[np.str_],
    shares: list[tuple[str, int, float]],
    title: str,
    path: Path,
) -> None:
    """World scatter of every site coloured by macro region, with the top-20 country shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_map, ax_bar) = plt.subplots(1, 2, figsize=(16, 6), gridspec_kw={"width_ratios": [3, 1]})
    for name, colour in REGION_COLOURS.items():
        sel = region == name
        ax_map.scatter(
            lon[sel], lat[sel], s=0.5, c=colour, linewidths=0, label=f"{name} ({sel.mean():.1%})", rasterized=True
        )
    ax_map.set_xlim(-180, 180)
    ax_map.set_ylim(-90, 90)
    ax_map.axhline(0, color="0.7", lw=0.5)
    ax_map.set_aspect("equal")
    ax_map.set_xlabel("longitude")
    ax_map.set_ylabel("latitude")
    ax_map.set_title(title)
    ax_map.legend(loc="lower left", fontsize=8, markerscale=12, frameon=False)
    top = shares[:20][::-1]
    ax_bar.barh([c for c, _, _ in top], [s for _, _, s in top], color="0.35")
    ax_bar.set_xlabel("share of sites")
    ax_bar.set_title("top-20 countries")
    ax_bar.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
