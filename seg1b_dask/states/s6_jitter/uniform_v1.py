"""S6 ``uniform_v1`` (legacy): a uniform point of the cell for every attempt."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Bounds = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]


def propose(
    bounds: Bounds, u: NDArray[np.float64], v: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    west, south, east, north = bounds
    return west + u * (east - west), south + v * (north - south)
