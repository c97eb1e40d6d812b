"""S2 ``legacy``: per-country weights from one basis (cell area or uniform), the old engine's
posture. Fixed-point integers: ``area_quantum_m2`` units for the area basis, 1 per cell for
the uniform basis; ineligible countries and sea weigh 0."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from seg1b_dask.policies.models import S2Legacy


def band_weights(
    country_id: NDArray[np.int16], row_area_m2: NDArray[np.float64], eligible: NDArray[np.bool_], policy: S2Legacy
) -> NDArray[np.uint64]:
    """Integer mass of each cell of a band (rows x cols)."""
    if policy.basis == "uniform":
        per_row = np.ones(len(row_area_m2), dtype=np.uint64)
    else:
        per_row = np.maximum(np.rint(row_area_m2 / policy.area_quantum_m2), 1).astype(np.uint64)
    return np.where(eligible[country_id], per_row[:, None], np.uint64(0)).astype(np.uint64)
