"""What a tile-weight mode does, so S2's wiring calls it without knowing which it is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray

from seg1b_dask.core.grid import Grid

Band = tuple[int, int]  # rows [row0, row1)
Cells = tuple[NDArray[np.int16], NDArray[np.float64]]  # a band's country ids and each row's cell area (m²)


@dataclass(frozen=True)
class Countries:
    """S1's country table as S2 reads it (one entry per country)."""

    population: NDArray[np.float64]
    region: NDArray[np.str_]
    eligible: NDArray[np.bool_]


class TileWeightMode(Protocol):
    """One S2 policy mode: the cell mass of a band and the country mass vector S4 allocates to."""

    governed: ClassVar[bool]  # the remediation posture: the mode governs the realism it owns
    advice: ClassVar[dict[str, str]]  # per gate family it owns: the knobs that move it
    passes: ClassVar[int]  # passes over the grid's bands (the first sums what the second needs)

    def unit(self) -> str:
        """What one unit of ``tile_weight`` means under this mode (written into the store)."""
        ...

    def country_totals(self, grid_folder: Path, grid: Grid, bands: list[Band], countries: Countries) -> Any:
        """Pass 1: what every band's weights need from the whole grid (``None`` when nothing)."""
        ...

    def band_weights(
        self,
        grid_folder: Path,
        grid: Grid,
        band: Band,
        cells: Cells,
        eligible: NDArray[np.bool_],
        totals: Any,
    ) -> NDArray[np.uint64]:
        """Fixed-point weight of every cell of the band: a pure function of the cell and ``totals``."""
        ...

    def country_share(
        self, tile_share: NDArray[np.float64], south: NDArray[np.float64], countries: Countries
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], dict[str, Any]]:
        """The country mass vector from the countries' tile-mass shares: (share, base share, stats)."""
        ...

    def stats(self, totals: Any) -> dict[str, Any]:
        """What pass 1 measured, for the run's figures."""
        ...
