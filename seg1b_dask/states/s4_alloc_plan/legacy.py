"""S4(a) ``legacy``: every outlet stays in its 1A country (the old engine's posture)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from seg1b_dask.model.mass import CountryVector
from seg1b_dask.policies.states import CountryAllocationLegacy
from seg1b_dask.states.s4_alloc_plan.contract import Allocation, HomeFloor, Pairs, footprint
from seg1b_dask.states.s4_alloc_plan.moves import no_moves

_FIXED = "country counts come from 1A under s4_alloc_plan country_allocation.mode legacy; switch to remass"


class Legacy:
    governed: ClassVar[bool] = False
    advice: ClassVar[dict[str, str]] = {
        "concentration": "Gini/top-k: " + _FIXED,
        "coverage": "coverage: " + _FIXED,
        "region_floor": "region floor: " + _FIXED,
        "footprint": "merchant footprint: set by 1A under country_allocation.mode legacy",
        "bootstrap": "concentration too close to the B+ line: " + _FIXED,
    }
    relocates: ClassVar[bool] = False

    def __init__(self, policy: CountryAllocationLegacy) -> None:
        self.policy = policy

    def country_counts(
        self, a_count: NDArray[np.int64], home_floor: HomeFloor, vector: CountryVector
    ) -> NDArray[np.int64]:
        return a_count.copy()

    def allocate(self, pairs: Pairs, vector: CountryVector, seed: int) -> Allocation:
        """The identity: 1A's counts, no moves."""
        _, per_merchant = np.unique(pairs.merchant, return_counts=True)
        max_1a = int(per_merchant.max()) if len(per_merchant) else 0
        stats = {
            "relocated_share": 0.0,
            **footprint(pairs.merchant, pairs.country, pairs.n_sites, pairs.home, "1b", max_1a),
        }
        return Allocation(pairs.merchant, pairs.country, pairs.n_sites, pairs.n_sites, no_moves(), stats)
