"""The regular EPSG:4326 tile grid: ``tile_id = row * ncols + col``, rows from the north."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

EARTH_RADIUS_M = 6_371_007.2  # authalic sphere: cell areas sum to the ellipsoid's area


@dataclass(frozen=True)
class Grid:
    resolution_arcsec: int

    @property
    def deg(self) -> float:
        return self.resolution_arcsec / 3600.0

    @property
    def nrows(self) -> int:
        return 180 * 3600 // self.resolution_arcsec

    @property
    def ncols(self) -> int:
        return 360 * 3600 // self.resolution_arcsec

    @property
    def ncells(self) -> int:
        return self.nrows * self.ncols

    def row_centre_lat(self, rows: NDArray[np.int64]) -> NDArray[np.float64]:
        return 90.0 - (np.asarray(rows, dtype=np.float64) + 0.5) * self.deg

    def south(self, tile_ids: NDArray[np.int64]) -> NDArray[np.bool_]:
        """Tiles south of the equator (rows never straddle it, so a tile's sites share its side)."""
        return self.row_centre_lat(np.asarray(tile_ids) // self.ncols) < 0

    def row_area_m2(self) -> NDArray[np.float64]:
        """Area of one cell in each row (area depends on latitude only)."""
        edges = np.radians(90.0 - np.arange(self.nrows + 1, dtype=np.float64) * self.deg)
        return EARTH_RADIUS_M**2 * np.radians(self.deg) * (np.sin(edges[:-1]) - np.sin(edges[1:]))

    def cell_of(
        self, lon: NDArray[np.float64], lat: NDArray[np.float64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(row, col) of the cell holding each point (edges clipped into the grid)."""
        row = np.clip(np.floor((90.0 - np.asarray(lat)) / self.deg).astype(np.int64), 0, self.nrows - 1)
        col = np.clip(np.floor((np.asarray(lon) + 180.0) / self.deg).astype(np.int64), 0, self.ncols - 1)
        return row, col

    def tile_bounds(self, tile_id: NDArray[np.int64]) -> tuple[NDArray[np.float64], ...]:
        """(west, south, east, north) of each tile."""
        tile_id = np.asarray(tile_id, dtype=np.int64)
        row, col = np.divmod(tile_id, self.ncols)
        west = -180.0 + col * self.deg
        north = 90.0 - row * self.deg
        return west, north - self.deg, west + self.deg, north
