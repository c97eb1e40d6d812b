"""S2 ``legacy``: per-country weights from one basis (cell area or uniform), the old engine's
posture. Fixed-point integers: ``area_quantum_m2`` units for the area basis, 1 per cell for
the uniform basis; ineligible countries and sea weigh 0. The country mass vector is the
tile mass share itself: nothing governs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from seg1b_dask.core.grid import Grid
from seg1b_dask.policies.states import S2Legacy
from seg1b_dask.states.s2_tile_weights.contract import Band, Cells, Countries


def band_weights(
    country_id: NDArray[np.int16], row_area_m2: NDArray[np.float64], eligible: NDArray[np.bool_], policy: S2Legacy
) -> NDArray[np.uint64]:
    """Integer mass of each cell of a band (rows x cols)."""
    if policy.basis == "uniform":
        per_row = np.ones(len(row_area_m2), dtype=np.uint64)
    else:
        per_row = np.maximum(np.rint(row_area_m2 / policy.area_quantum_m2), 1).astype(np.uint64)
    return np.where(eligible[country_id], per_row[:, None], np.uint64(0)).astype(np.uint64)


class Legacy:
    governed: ClassVar[bool] = False
    advice: ClassVar[dict[str, str]] = {
        "urban": "urban share: s2_tile_weights tile_weights.mode legacy spreads by area alone; switch to blend_v2",
    }
    passes: ClassVar[int] = 1

    def __init__(self, policy: S2Legacy) -> None:
        self.policy = policy

    def unit(self) -> str:
        return "area_quantum_m2" if self.policy.basis == "area_m2" else "cell"

    def country_totals(self, grid_folder: Path, grid: Grid, bands: list[Band], countries: Countries) -> None:
        return None

    def band_weights(
        self, grid_folder: Path, grid: Grid, band: Band, cells: Cells, eligible: NDArray[np.bool_], totals: Any
    ) -> NDArray[np.uint64]:
        return band_weights(*cells, eligible, self.policy)

    def country_share(
        self, tile_share: NDArray[np.float64], south: NDArray[np.float64], countries: Countries
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], dict[str, Any]]:
        return tile_share, tile_share, {}

    def stats(self, totals: Any) -> dict[str, Any]:
        return {}
