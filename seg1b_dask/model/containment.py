"""Is a point inside its tile, inside its country? Shared by S7 (which proves it) and S9
(which checks it again over the published rows)."""

from __future__ import annotations

import numpy as np
import shapely
from numpy.typing import NDArray

from seg1b_dask.core.grid import Grid
from seg1b_dask.io import refdata


def inside_tile(
    lon: NDArray[np.float64], lat: NDArray[np.float64], tile_id: NDArray[np.int64], grid: Grid
) -> NDArray[np.bool_]:
    west, south, east, north = grid.tile_bounds(tile_id)
    return (lon >= west) & (lon <= east) & (lat >= south) & (lat <= north)


def inside_country(
    lon: NDArray[np.float64], lat: NDArray[np.float64], country_id: NDArray[np.int16]
) -> NDArray[np.bool_]:
    geoms = refdata.countries().geometry
    ok = np.zeros(len(lon), dtype=bool)
    for cid in np.unique(country_id[country_id > 0]):  # id 0 (no country) is never inside
        sel = country_id == cid
        ok[sel] = shapely.contains_xy(geoms[cid - 1], lon[sel], lat[sel])
    return ok
