"""S4(a) ``legacy``: every outlet stays in its 1A country (the old engine's posture)."""

from __future__ import annotations

import numpy as np

from seg1b_dask.states.s4_alloc_plan.moves import no_moves
from seg1b_dask.states.s4_alloc_plan.remass import Allocation, Pairs, footprint


def allocate(pairs: Pairs) -> Allocation:
    """The identity: 1A's counts, no moves."""
    _, per_merchant = np.unique(pairs.merchant, return_counts=True)
    max_1a = int(per_merchant.max()) if len(per_merchant) else 0
    stats = {
        "relocated_share": 0.0,
        **footprint(pairs.merchant, pairs.country, pairs.n_sites, pairs.home, "1b", max_1a),
    }
    return Allocation(pairs.merchant, pairs.country, pairs.n_sites, pairs.n_sites, no_moves(), stats)
